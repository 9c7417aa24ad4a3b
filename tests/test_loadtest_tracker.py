"""Sans-I/O parts of the load generators: positions, Zipf picks, histograms,
and the folding of worker reports into a result."""

from __future__ import annotations

import random

import pytest

from scorecast.loadtest.histogram import LatencyHistogram
from scorecast.loadtest.results import StormResults
from scorecast.loadtest.tally import COUNTERS, Tally
from scorecast.loadtest.tracker import Arrival, Positions
from scorecast.loadtest.zipf import ZipfTopics


def test_positions_name_every_violation_once():
    positions = Positions()
    assert positions.event("a", 1) is Arrival.NO_SNAPSHOT
    positions.snapshot("a", 3)
    assert positions.event("a", 4) is Arrival.OK
    assert positions.event("a", 4) is Arrival.DUPLICATE
    assert positions.event("a", 2) is Arrival.BACKWARDS
    assert positions.event("a", 7) is Arrival.GAP
    assert positions.event("a", 8) is Arrival.OK  # a gap is reported once
    positions.snapshot("a", 1)  # a reset stream: the snapshot wins
    assert positions.event("a", 2) is Arrival.OK
    assert positions.since(["a", "b"]) == {"a": 2}


def test_zipf_draws_distinct_topics_most_popular_first():
    zipf = ZipfTopics(50, 1.0, "m.")
    rng = random.Random(3)
    picks = [zipf.sample(3, rng) for _ in range(3000)]
    assert all(len(set(p)) == 3 for p in picks)
    counts: dict[str, int] = {}
    for pick in picks:
        for topic in pick:
            counts[topic] = counts.get(topic, 0) + 1
    assert counts["m.1"] > counts["m.2"] > counts["m.10"] > counts.get("m.50", 0)
    assert zipf.sample(60, rng) == zipf.names
    assert abs(sum(zipf.probability(r) for r in range(1, 51)) - 1) < 1e-9
    with pytest.raises(ValueError):
        ZipfTopics(0)


def test_histogram_quantiles_within_a_bucket_and_merge():
    histogram = LatencyHistogram()
    for millis in range(1, 1001):
        histogram.record(millis / 1000)
    assert histogram.quantile(0.5) == pytest.approx(0.5, rel=0.05)
    assert histogram.quantile(0.99) == pytest.approx(0.99, rel=0.05)
    assert histogram.quantile(1.0) == pytest.approx(1.0)
    other = LatencyHistogram.from_dict(histogram.to_dict())
    other.record(-0.001)  # a clock a hair behind counts in the smallest bucket
    other.merge(histogram)
    assert other.count == 2001 and other.max == 1.0
    assert LatencyHistogram().quantile(0.5) is None
    assert LatencyHistogram().summary()["p99_ms"] is None


def test_results_fold_ticks_and_finals():
    results = StormResults(connections=4, workers=2)
    for worker in (0, 1):
        tally = Tally()
        tally.up, tally.opened, tally.events = 2, 2, 10
        tally.window["delivery"].record(0.002)
        tally.gaps = worker  # worker 1 saw one gap
        results.add({"kind": "tick", "worker": worker, "second": 0, **tally.tick()})
        results.add({"kind": "final", "worker": worker, **tally.totals()})
    results.add_published(0, 5)
    row = results.row(0)
    assert row["connections"] == 4 and row["msgs"] == 20 and row["errors"] == 1
    assert row["published"] == 5 and row["delivery_p50_ms"] == pytest.approx(2, rel=0.05)
    assert "up       4/4" in results.progress(0)
    document = results.document({"duration": 1}, {"cpus": 2}, "now")
    assert document["totals"]["events"] == 20
    assert document["totals"]["gaps"] == 1
    assert document["totals"]["seconds_to_target"] == 1
    assert document["latency"]["delivery"]["count"] == 2


def test_tally_declares_each_counter_it_counts():
    # the annotations are what mypy checks `tally.opened += 1` against
    declared = {name for name, kind in Tally.__annotations__.items() if kind == "int"}
    assert declared == set(COUNTERS)
    assert all(getattr(Tally(), name) == 0 for name in COUNTERS)
