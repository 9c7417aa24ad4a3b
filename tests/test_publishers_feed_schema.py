"""publishers/feed.schema.json describes what publishers.feed accepts: every
sample feed validates against it, and items the code refuses for a reason the
schema can state are refused by the schema too."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from scorecast.publishers.feed import check_item
from scorecast.publishers.replay import SAMPLES

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "publishers/feed.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
GOAL = {"topic": "match.1", "kind": "goal", "data": {"home": {"score": 1}}}


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.ndjson")), ids=lambda p: p.name)
def test_every_sample_line_validates(sample):
    lines = [line for line in sample.read_bytes().splitlines() if line.strip()]
    assert lines
    for number, line in enumerate(lines, start=1):
        item = orjson.loads(line)
        errors = [e.message for e in VALIDATOR.iter_errors(item)]
        assert not errors, f"{sample.name}:{number}: {errors}"
        check_item(item, paced=True)  # and the code agrees


@pytest.mark.parametrize(
    "item",
    [
        {**GOAL, "topic": "match.*"},
        {**GOAL, "topic": "a.b.c.d.e.f.g.h.i"},
        {**GOAL, "kind": ""},
        {**GOAL, "kind": "k" * 65},
        {**GOAL, "data": [1]},
        {"topic": "match.1", "kind": "goal"},
        {**GOAL, "id": 17},
        {**GOAL, "id": " padded"},
        {**GOAL, "id": "x" * 257},
        {**GOAL, "at": -1},
        {**GOAL, "ts": "yesterday"},
    ],
)
def test_what_the_schema_refuses_the_code_refuses(item):
    assert list(VALIDATOR.iter_errors(item))
    with pytest.raises(ValueError):
        check_item(item, paced=True)


def test_what_the_schema_takes_the_code_takes():
    for item in (GOAL, {**GOAL, "id": "feed 1", "at": 3, "extra": True}, {**GOAL, "ts": 1.5e9}):
        assert not list(VALIDATOR.iter_errors(item))
        check_item(item, paced=True)
