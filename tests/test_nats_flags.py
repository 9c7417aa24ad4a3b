"""The NATS credential flags of PROTOCOL.md section 7 on every command that
connects to NATS, their environment variables, and the usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scorecast.cli import build_parser, gateway_settings, nats_auth

FLAGS = ("--nats-creds", "--nats-user", "--nats-password", "--nats-token", "--nats-tls-ca")
COMMANDS = (["gateway"], ["simulate"], ["ingest"], ["replay", "feed.ndjson"])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_nats_command_takes_the_credential_flags(command):
    args = build_parser({}).parse_args(
        [*command, "--nats-user", "gateway", "--nats-password", "pw", "--nats-tls-ca", "ca.pem"]
    )
    auth = nats_auth(args)
    assert (auth.user, auth.password, auth.tls_ca) == ("gateway", "pw", "ca.pem")
    help_text = build_parser({})._subparsers._group_actions[0].choices[command[0]].format_help()
    for flag in FLAGS:
        assert flag in help_text


def test_the_flags_read_the_environment():
    environ = {"SCORECAST_NATS_USER": "publisher", "SCORECAST_NATS_PASSWORD": "from-env"}
    auth = nats_auth(build_parser(environ).parse_args(["ingest"]))
    assert (auth.user, auth.password) == ("publisher", "from-env")
    creds = nats_auth(build_parser({"SCORECAST_NATS_CREDS": "/x.creds"}).parse_args(["simulate"]))
    assert creds.options() == {"user_credentials": "/x.creds"}


def test_the_gateway_settings_carry_the_credentials():
    args = build_parser({}).parse_args(["gateway", "--nats-token", "t0k3n"])
    settings = gateway_settings(args)
    assert settings.nats_auth().options() == {"token": "t0k3n"}


@pytest.mark.parametrize(
    "flags",
    [["--nats-user", "u"], ["--nats-user", "u", "--nats-password", "p", "--nats-token", "t"]],
)
def test_a_bad_combination_is_a_one_line_usage_error(flags):
    answer = subprocess.run(
        [sys.executable, "-m", "scorecast.cli", "simulate", *flags],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert answer.returncode == 2
    assert "Traceback" not in answer.stderr
    assert "nats" in answer.stderr.strip().splitlines()[-1]
