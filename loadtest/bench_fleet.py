"""The generator processes of a benchmark run, driven from the parent.

``Fleet(size)`` spawns ``size`` processes running
:func:`loadtest.bench_clients.generator_main`, each with its own source
address in 127.0.1.0/24 (about 28,000 ephemeral ports per source and
destination pair, and one process holds at most ~15,000 sockets, so no
process ever runs out of ports). Calls send a command to every process and
gather the answers; ``split`` deals connections out round-robin.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from scorecast.loadtest.bench_clients import Command, generator_main
from scorecast.loadtest.procstat import CpuTimes, ProcessGroup

__all__ = ["Fleet"]

T = TypeVar("T")


class Fleet:
    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        for index in range(size):
            parent, child = context.Pipe()
            process = context.Process(
                target=generator_main,
                args=(child, f"127.0.1.{index + 1}"),
                name=f"bench-generator-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    @property
    def size(self) -> int:
        return len(self.pipes)

    def split(self, items: list[T]) -> list[list[T]]:
        return [items[index :: self.size] for index in range(self.size)]

    def cpu(self) -> CpuTimes:
        # every process was started in __init__, so each has its pid
        return ProcessGroup([p.pid for p in self.processes if p.pid is not None]).cpu()

    async def call(self, command: Command, arguments: list[dict[str, Any]] | None = None) -> list:
        arguments = arguments or [{}] * self.size
        for pipe, argument in zip(self.pipes, arguments, strict=True):
            pipe.send((command, argument))
        return await asyncio.gather(*(asyncio.to_thread(self._answer, pipe) for pipe in self.pipes))

    def _answer(self, pipe: Connection) -> Any:
        try:
            return pipe.recv()
        except EOFError:
            raise RuntimeError("a generator process died; see its output above") from None

    async def shutdown(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # already gone
                pipe.send((Command.EXIT, {}))
        for process in self.processes:
            await asyncio.to_thread(process.join, 5)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)
        for pipe in self.pipes:
            pipe.close()
