"""The README's quick-start examples, run as they are written against the stack
``make run`` starts (``scorecast dev``). Only the ports differ: the test takes
free ones, writes them into the URLs and sets ``SCORECAST_URL`` for commands
that use the default one, so a port in use on the machine does not fail it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scorecast.natsserver import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quick_start_commands() -> list[str]:
    """The commands of the README's "In a second terminal" block, one string
    each (continuation lines joined), comments and output lines left out."""
    text = README.read_text()
    block = text.split("In a second terminal", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


def test_the_quick_start_block_is_found():
    commands = quick_start_commands()
    assert any(c.startswith(".venv/bin/scorecast watch") for c in commands)
    assert sum(c.startswith("curl") for c in commands) == 3


@pytest.mark.slow
async def test_the_readme_examples_work_against_scorecast_dev():
    gateway_port, ingest_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "dev",
        "--port", str(gateway_port), "--ingest-port", str(ingest_port),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        printed = ""
        while "Ingest:" not in printed:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, "scorecast dev exited before printing its URLs"
            printed += line.decode()
        # a command that takes the default URL reads it from the environment
        environment = {**os.environ, "SCORECAST_URL": f"ws://127.0.0.1:{gateway_port}/ws"}
        for command in quick_start_commands():
            command = command.replace(":8080", f":{gateway_port}")
            command = command.replace(":8090", f":{ingest_port}")
            done = await asyncio.to_thread(
                subprocess.run, command, shell=True, cwd=ROOT, capture_output=True,
                text=True, timeout=90, env=environment,
            )  # fmt: skip
            check(command, done)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


def check(command: str, done: subprocess.CompletedProcess) -> None:
    out = done.stdout
    if "scorecast watch" in command:
        assert done.returncode == 0, done.stderr
        lines = out.splitlines()
        assert len(lines) == 5 and all(line.startswith("{") for line in lines), out
    elif "/sse?" in command:
        assert done.returncode in (0, 28), done.stderr  # 28: --max-time ended it
        assert "event: snapshot" in out and re.search(r"^id: ", out, re.M), out
    elif "/v1/topics/" in command:
        assert done.returncode == 0 and out.startswith("HTTP/1.1 200"), out
        assert re.search(r"^etag: ", out, re.M | re.I), out
    elif "/v1/events" in command:
        assert done.returncode == 0, done.stderr
        assert '"accepted"' in out and '"topic":"match.77"' in out, out
    else:
        raise AssertionError(f"a README example this test does not know: {command}")
