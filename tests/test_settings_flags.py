"""One source for each setting (issue 13): every settings field is a flag of
the commands that take that class, every flag is a field, renamed flags keep
their old spelling with a warning, ``none`` sets "no limit", and --help and
the README show every flag."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scorecast.cli import COMMANDS, build_parser, gateway_settings
from scorecast.flags import flag_of, settings_from
from scorecast.gateway.settings import GatewaySettings
from scorecast.publishers.settings import PublisherSettings

README = Path(__file__).resolve().parents[1] / "README.md"
# flags a command takes that are no settings field: the logging pair on every
# command, watch's --sse switch
NOT_FIELDS = {"--help", "-h", "--log-level", "--log-format", "--sse"}
RENAMED = {  # command: (old flag, new flag, the settings field)
    "gateway": ("--history", "--replay-buffer", "replay_buffer"),
    "simulate": ("--history", "--stream-history", "stream_history"),
    "ingest": ("--history", "--stream-history", "stream_history"),
    "replay": ("--history", "--stream-history", "stream_history"),
}
POSITIONAL = {"replay": ["feed.ndjson"], "watch": ["match.1"]}


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def _flags(command: str) -> dict[str, argparse.Action]:
    flags = {}
    for action in _subparser(build_parser({}, load_tools=False), command)._actions:
        for option in action.option_strings:
            flags[option] = action
    return flags


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_field_is_a_flag_and_every_flag_a_field(command):
    fields = {
        flag_of(field): field.name
        for cls in COMMANDS[command]
        for field in dataclasses.fields(cls)
        if flag_of(field) is not None
    }
    flags = _flags(command)
    old = {RENAMED[command][0]} if command in RENAMED else set()
    assert set(fields) == set(flags) - NOT_FIELDS - old
    for flag, name in fields.items():
        assert flags[flag].dest == name


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_every_flag_with_its_default(command):
    text = _subparser(build_parser({}, load_tools=False), command).format_help()
    for flag, action in _flags(command).items():
        if flag in NOT_FIELDS:
            continue
        assert flag in text
        assert action.help is not None and "default: " in action.help, flag


def test_the_defaults_are_the_dataclass_defaults():
    args = build_parser({}).parse_args(["gateway"])
    assert dataclasses.replace(gateway_settings(args), node="x") == GatewaySettings(node="x")
    args = build_parser({}).parse_args(["ingest"])
    assert settings_from(PublisherSettings, args) == PublisherSettings()


@pytest.mark.parametrize("command", list(RENAMED))
def test_a_renamed_flag_still_works_and_warns(command, capsys):
    old, new, field = RENAMED[command]
    words = [command, *POSITIONAL.get(command, [])]
    args = build_parser({}).parse_args([*words, old, "7"])
    assert getattr(args, field) == 7
    assert capsys.readouterr().err.strip() == f"scorecast {command}: {old} is deprecated; use {new}"
    args = build_parser({}).parse_args([*words, new, "8"])
    assert getattr(args, field) == 8
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", list(RENAMED))
def test_a_renamed_variable_still_works_and_warns(command, capsys):
    _, new, field = RENAMED[command]
    words = [command, *POSITIONAL.get(command, [])]
    args = build_parser({"SCORECAST_HISTORY": "9"}).parse_args(words)
    assert getattr(args, field) == 9
    new_variable = "SCORECAST_" + new[2:].upper().replace("-", "_")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"scorecast {command}: SCORECAST_HISTORY is deprecated; use {new_variable}"]
    environ = {"SCORECAST_HISTORY": "9", new_variable: "10"}
    assert getattr(build_parser(environ).parse_args(words), field) == 10  # the new one wins


def test_the_warning_comes_only_from_the_command_that_runs(capsys):
    build_parser({"SCORECAST_HISTORY": "9"}).parse_args(["gateway"])
    assert "STREAM_HISTORY" not in capsys.readouterr().err


def test_none_means_no_limit():
    args = build_parser({}).parse_args(
        ["gateway", "--max-topics-per-connection", "none", "--max-message-size", "NONE"]
    )
    settings = gateway_settings(args)
    assert settings.max_topics_per_connection is None and settings.max_message_size is None
    environ = {"SCORECAST_CONNECTIONS_PER_SECOND": "none", "SCORECAST_MAX_CONNECTIONS": "0"}
    settings = gateway_settings(build_parser(environ).parse_args(["gateway"]))
    assert settings.connections_per_second is None and settings.max_connections is None
    assert build_parser({}).parse_args(["watch", "match.1", "--seconds", "none"]).seconds is None


@pytest.mark.parametrize(
    "args, env",
    [
        (["gateway", "--max-topics-per-connection", "lots"], {}),
        (["gateway"], {"SCORECAST_MAX_CONNECTIONS": "many"}),
        (["gateway", "--history", "-3"], {}),
        (["simulate"], {"SCORECAST_HISTORY": "x"}),
    ],
)
def test_garbage_is_a_one_line_usage_error(args, env):
    done = subprocess.run(
        [sys.executable, "-m", "scorecast.cli", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **env},
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if "deprecated" not in line]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["gateway", "simulate", "ingest", "replay", "dev", "cluster"])
def test_the_readme_names_every_flag(command):
    text = README.read_text()
    missing = [
        flag
        for flag in _flags(command)
        if flag not in NOT_FIELDS and f"`{flag}" not in text and f", {flag}" not in text
    ]
    assert missing == []


def test_the_storm_flags_are_its_settings_fields():
    pytest.importorskip("scorecast.loadtest")
    from scorecast.flags import Parser
    from scorecast.loadtest.storm_settings import StormSettings, add_arguments, settings_from_args

    parser = add_arguments(Parser(prog="storm"), {})
    flags = {o for a in parser._actions for o in a.option_strings} - NOT_FIELDS - {"--history"}
    assert flags == {flag_of(field) for field in dataclasses.fields(StormSettings)}
    assert settings_from_args(parser.parse_args([])) == StormSettings()
