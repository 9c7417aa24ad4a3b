"""Counters and the latency histogram (sans-I/O): a publisher's bad clock
cannot poison the publish-to-send metric."""

from __future__ import annotations

import time

from scorecast.gateway.stats import Stats


def test_an_absurd_timestamp_is_clamped_and_counted():
    stats = Stats()
    stats.observe_latency(-1e300)
    stats.observe_latency(time.time() - 1e9)
    assert stats.latency_sum <= 2 * 60.0  # each at most the ceiling
    assert stats.latency_absurd == 2
    assert stats.latency_counts[-1] == 2  # the +Inf bucket


def test_a_future_timestamp_counts_as_zero_and_is_counted():
    stats = Stats()
    stats.observe_latency(time.time() + 3600)
    stats.observe_latency(1e300)
    assert stats.latency_future == 2
    assert stats.latency_sum == 0.0 and stats.latency_counts[0] == 2


def test_a_sane_timestamp_is_observed_as_it_is():
    stats = Stats()
    stats.observe_latency(time.time() - 0.2)
    assert 0.2 <= stats.latency_sum < 1.0
    assert stats.latency_absurd == stats.latency_future == 0
