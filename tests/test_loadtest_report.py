"""``scorecast report``: a storm result becomes a self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re

from scorecast.loadtest.report import main
from scorecast.loadtest.results import StormResults
from scorecast.loadtest.tally import Tally


def a_result() -> dict:
    results = StormResults(connections=10, workers=1)
    tally = Tally()
    for second in range(5):
        tally.up = min(10, 3 * (second + 1))
        tally.opened += 3
        tally.events += 20
        tally.drops += second == 3
        tally.window["delivery"].record(0.001 * (second + 1))
        results.add({"kind": "tick", "worker": 0, "second": second, **tally.tick()})
    results.add({"kind": "final", "worker": 0, **tally.totals()})
    return results.document({"duration": 5, "reconnect_at": 3.0}, {"cpus": 2}, "now")


def test_report_embeds_four_plots_and_the_totals(tmp_path):
    source = tmp_path / "storm.json"
    source.write_text(json.dumps(a_result()))
    assert main([str(source), "--png"]) == 0
    page = (tmp_path / "storm.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "gaps / duplicates / backwards" in page
    for name in ("connections", "latency", "messages", "errors"):
        assert (tmp_path / f"storm-{name}.png").read_bytes().startswith(b"\x89PNG")


def test_report_answers_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert main([str(tmp_path / "other.json")]) == 2
    assert "not a storm result" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main([str(tmp_path / "broken.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
