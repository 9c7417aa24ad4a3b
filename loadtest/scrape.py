"""Reads a gateway's ``/metrics`` during a storm, to set its view beside ours.

The harness's one GET (:func:`scorecast.loadtest.stack.metrics_of`, in a
thread) parsed with ``prometheus_client``'s text parser. Samples come back as
``{name: value}`` with labels folded into the name
(``scorecast_handshakes_refused_total{reason="full"}``).
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from scorecast.loadtest.stack import metrics_of

__all__ = ["parse_metrics", "scrape"]


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


async def scrape(host: str, port: int, timeout: float = 2.0) -> dict[str, float]:
    """One ``GET /metrics``; raises OSError (TimeoutError among them) or ValueError."""
    return await asyncio.to_thread(metrics_of, port, host, timeout)
