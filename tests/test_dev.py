"""`scorecast dev` as a person runs it (what `make run` starts): the printed
URLs serve, a client gets welcome, snapshot and ordered events, locust runs
against the stack, and SIGTERM stops everything cleanly."""

from __future__ import annotations

import asyncio
import csv
import re
import signal
import sys
from pathlib import Path

from scorecast.natsserver import free_port
from tests.support import Recorder, check_sequence

LOCUST = str(Path(sys.executable).with_name("locust"))
ROOT = Path(__file__).resolve().parent.parent


async def read_urls(process: asyncio.subprocess.Process) -> tuple[str, str]:
    urls: dict[str, str] = {}
    async with asyncio.timeout(30):
        while "ws" not in urls or "nats" not in urls:
            line = (await process.stdout.readline()).decode()
            assert line, "scorecast dev exited before printing its URLs"
            if match := re.search(r"(ws://[\d.:]+/ws)", line):
                urls["ws"] = match.group(1)
            if match := re.search(r"(nats://[\d.:]+)", line):
                urls["nats"] = match.group(1)
    return urls["ws"], urls["nats"]


async def test_scorecast_dev_serves_and_stops_cleanly(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "dev",
        "--port", str(free_port()), "--nats-port", str(free_port()), "--matches", "6",
        "--minute-seconds", "0.05",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ws_url, nats_url = await read_urls(process)
        assert nats_url.startswith("nats://127.0.0.1:")
        client = await Recorder.open(ws_url)
        welcome = await client.wait_for(lambda m: m["type"] == "welcome")
        assert welcome["protocol"] == 1 and welcome["node"] == "dev"
        await client.send({"type": "subscribe", "id": 1, "topics": ["match.1001"]})
        await client.wait_for(lambda m: m["type"] == "snapshot")
        await client.wait_for(
            lambda m: [x["type"] for x in client.of("match.1001")].count("event") >= 5
        )
        assert check_sequence(client.of("match.1001")) >= 5
        await client.close()

        prefix = tmp_path / "locust"
        locust = await asyncio.create_subprocess_exec(
            LOCUST, "-f", "loadtest/locustfile.py", "--headless", "--csv", str(prefix),
            "--only-summary", "--host", ws_url.removesuffix("/ws"), "-u", "10", "-r", "10",
            "-t", "10s",  # the topic defaults are dev's matches
            "--loglevel", "WARNING",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(locust.communicate(), 60)
        assert locust.returncode == 0, output.decode()[-2000:]
        with open(f"{prefix}_stats.csv", newline="") as file:
            stats = {row["Name"]: row for row in csv.DictReader(file)}
        assert int(stats["connect"]["Request Count"]) == 10
        assert int(stats["snapshot"]["Request Count"]) >= 10
        assert int(stats["event"]["Request Count"]) > 10
        assert int(stats["Aggregated"]["Failure Count"]) == 0

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
