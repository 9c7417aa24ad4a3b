"""One task group per process: every background task is spawned here, a
failed one is logged (never swallowed), a long-lived loop that raises is
restarted with a logged error and a counter, and ``stop()`` awaits what it
cancels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["Supervisor"]

log = logging.getLogger("scorecast.supervise")

RESTART_DELAY = 0.1  # first pause before a failed loop runs again
RESTART_DELAY_MAX = 5.0


class Supervisor:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loop_restarts = 0
        self.tasks_failed = 0
        self.restarts: dict[str, int] = {}

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.tasks_failed += 1
            log.error("task %s failed", task.get_name(), exc_info=error)

    def loop(self, name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``body()`` for as long as the process runs: when it raises (or
        returns) it is logged, counted and started again after a pause that
        doubles up to :data:`RESTART_DELAY_MAX`."""
        return self.spawn(self._keep(name, body), name=name)

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        delay = RESTART_DELAY
        while True:
            try:
                await body()
                log.error("loop %s returned; starting it again", name)
            except Exception:
                log.exception("loop %s failed; starting it again in %.1f s", name, delay)
            self.loop_restarts += 1
            self.restarts[name] = self.restarts.get(name, 0) + 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    async def stop(self) -> None:
        """Cancel every task and wait until each has finished."""
        current = asyncio.current_task()
        while True:
            tasks = [task for task in self.tasks if task is not current and not task.done()]
            if not tasks:
                return
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
