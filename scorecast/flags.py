"""Command-line flags that also read the environment: ``--flag-name`` falls
back to ``SCORECAST_FLAG_NAME`` (PROTOCOL.md section 7). One helper for every
command (``scorecast`` itself, ``storm``, ``bench``), parsed once at the edge."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["csv", "env_flag", "variable_for"]


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
        except ValueError as error:
            parser.error(f"{variable}={raw!r}: {error}")
    shown = ",".join(default) if isinstance(default, tuple) else default
    parser.add_argument(
        flag, default=value, type=kind, help=f"{help} [{variable}, default: {shown}]"
    )


def csv(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())
