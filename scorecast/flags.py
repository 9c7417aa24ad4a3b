"""Command-line flags that also read the environment: ``--flag-name`` falls
back to ``SCORECAST_FLAG_NAME`` (PROTOCOL.md section 7). One helper for every
command (``scorecast`` itself, ``storm``, ``bench``), parsed once at the edge."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "LOG_LEVELS",
    "Parser",
    "above",
    "at_least",
    "csv",
    "env_flag",
    "log_level",
    "port",
    "variable_for",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def variable_for(flag: str) -> str:
    return "SCORECAST_" + flag.lstrip("-").upper().replace("-", "_")


def env_flag(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    flag: str,
    default: Any = None,
    kind: Callable[[str], Any] = str,
    help: str = "",
) -> None:
    """Add ``flag`` with its default taken from the environment when set there;
    a value the environment gets wrong is a usage error naming the variable."""
    variable = variable_for(flag)
    raw = environ.get(variable)
    value = default
    if raw is not None:
        try:
            value = kind(raw)
        except (ValueError, argparse.ArgumentTypeError) as error:
            parser.error(f"{variable}={raw!r}: {error}")
    shown = ",".join(default) if isinstance(default, tuple) else default
    parser.add_argument(
        flag, default=value, type=kind, help=f"{help} [{variable}, default: {shown}]"
    )


def csv(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: a free one where a command allows it)."""
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def at_least(minimum: float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """A number no smaller than ``minimum``: ``at_least(1)`` for a count that
    must be positive, ``at_least(0.0, float)`` for a duration."""

    def parse(text: str) -> Any:
        value = _integer(text) if kind is int else _number(text)
        if value < minimum or value != value:  # NaN is no number of seconds
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


def log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def above(minimum: float) -> Callable[[str], float]:
    """A number greater than ``minimum`` (seconds or a rate that cannot be 0)."""

    def parse(text: str) -> float:
        value = _number(text)
        if not value > minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be more than {minimum:g}")
        return value

    parse.__name__ = "number"
    return parse


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")
