"""What every long-running process of scorecast shares, below both the
command line and the parts it starts: running a coroutine on uvloop.
(Logging set-up is :mod:`scorecast.logs`, the NATS outage log
:mod:`scorecast.outage`.) Nothing here imports the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_loop"]


def run_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` on uvloop (the asyncio loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
