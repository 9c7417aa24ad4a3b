"""Reads a gateway's ``/metrics`` during a storm, to set its view beside ours.

A plain HTTP/1.0 GET over asyncio streams (no client library needed for one
request a second) parsed with ``prometheus_client``'s text parser. Samples
come back as ``{name: value}`` with labels folded into the name
(``scorecast_handshakes_refused_total{reason="full"}``).
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["parse_metrics", "scrape"]


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


async def scrape(host: str, port: int, timeout: float = 2.0) -> dict[str, float]:
    """One ``GET /metrics``; raises OSError, TimeoutError or ValueError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET /metrics HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            response = await reader.read()
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.partition(b"\r\n")[0]
    if status_line.split(b" ", 2)[1:2] != [b"200"]:
        raise ValueError(f"GET /metrics answered {status_line[:80]!r}")
    return parse_metrics(body.decode())
