"""``--trusted-proxies``: X-Forwarded-For is believed from the load balancer
only, and per-address limits count the client, not the balancer. Real
gateways, real handshakes (the test's connections come from 127.0.0.1,
which plays the balancer when it is trusted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from scorecast.gateway.metrics import REFUSAL_REASONS, render
from scorecast.gateway.proxies import TrustedProxies, cidrs
from tests.support import ws_url


async def status_of(url: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    try:
        async with connect(url, additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_per_address_limit_counts_the_forwarded_client(make_gateway, js):
    """Behind a trusted balancer one client's reconnect loop is throttled and
    another client is not (the old gateway counted the balancer: both 429)."""
    gw = await make_gateway(connections_per_ip_per_second=2, trusted_proxies=("127.0.0.0/8",))
    url = ws_url(gw)
    assert [await status_of(url, "198.51.100.1") for _ in range(2)] == [101, 101]
    assert await status_of(url, "198.51.100.1") == 429
    assert await status_of(url, "198.51.100.2") == 101
    # a spoofed entry on the left does not make a new client: the balancer's
    # own entry (the rightmost untrusted one) is the address
    assert await status_of(url, "203.0.113.50, 198.51.100.1") == 429


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(make_gateway, js):
    gw = await make_gateway(connections_per_ip_per_second=2, trusted_proxies=("10.0.0.0/8",))
    url = ws_url(gw)
    assert await status_of(url, "198.51.100.1") == 101
    assert await status_of(url, "198.51.100.2") == 101
    assert await status_of(url, "198.51.100.3") == 429  # all three are 127.0.0.1


async def test_without_trusted_proxies_the_header_is_ignored(make_gateway, js):
    gw = await make_gateway(connections_per_ip_per_second=1)
    url = ws_url(gw)
    assert await status_of(url, "198.51.100.1") == 101
    assert await status_of(url, "198.51.100.2") == 429


def test_client_address_rules():
    proxies = TrustedProxies(["10.0.0.0/8", "fd00::/8"])
    assert proxies.client("192.0.2.1", ["198.51.100.1"]) == "192.0.2.1"  # untrusted peer
    assert proxies.client("10.1.1.1", []) == "10.1.1.1"
    assert proxies.client("10.1.1.1", ["198.51.100.1"]) == "198.51.100.1"
    assert proxies.client("10.1.1.1", ["198.51.100.1, 10.2.2.2"]) == "198.51.100.1"
    assert proxies.client("10.1.1.1", ["1.2.3.4", "198.51.100.1"]) == "198.51.100.1"
    assert proxies.client("10.1.1.1", ["garbage"]) == "10.1.1.1"
    assert proxies.client("10.1.1.1", ["198.51.100.1:4711"]) == "198.51.100.1"
    assert proxies.client("10.1.1.1", ["[2001:db8::1]:443"]) == "2001:db8::1"
    assert proxies.client("::ffff:10.1.1.1", ["198.51.100.1"]) == "198.51.100.1"
    assert proxies.client("10.1.1.1", ["10.3.3.3"]) == "10.3.3.3"  # all trusted: leftmost
    assert not TrustedProxies([])
    assert cidrs("10.0.0.0/8, 192.168.1.1") == ("10.0.0.0/8", "192.168.1.1")
    with pytest.raises(ValueError):
        cidrs("10.0.0.0/8,nonsense")


def test_a_bad_cidr_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "scorecast.cli", "gateway", "--trusted-proxies", "10.0.0.0/33"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--trusted-proxies" in result.stderr and "Traceback" not in result.stderr


# --- metrics that the alerts and the dashboard read -------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_nats_connected_is_zero_when_one_of_two_workers_lost_nats():
    both = samples(render(lambda: [{"nats_connected": 1}, {"nats_connected": 1}]).decode())
    one = samples(render(lambda: [{"nats_connected": 1}, {"nats_connected": 0}]).decode())
    assert both[("scorecast_nats_connected", ())] == 1
    assert both[("scorecast_nats_connected_workers", ())] == 2
    assert one[("scorecast_nats_connected", ())] == 0
    assert one[("scorecast_nats_connected_workers", ())] == 1


async def test_every_refusal_reason_has_a_series_from_the_start(gateway, js):
    found = samples(await asyncio.to_thread(scrape, gateway.port))
    for reason in REFUSAL_REASONS:
        assert found[("scorecast_handshakes_refused_total", (("reason", reason),))] == 0
    assert found[("scorecast_nats_connected", ())] == 1
