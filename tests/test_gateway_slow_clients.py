"""Slow clients: conflation past the soft limit, 4008 past the hard limit,
while fast clients on the same topic keep their full sequence."""

from __future__ import annotations

import asyncio

from scorecast.gateway.server import Gateway
from tests.support import RawClient, RawPublisher, Recorder, check_sequence, ws_url

EVENTS = 600
PAD = "x" * 8000  # 8 KB events: 4.8 MB in all, past the kernel's socket buffers


async def setup(gw: Gateway, js):
    publisher = RawPublisher(js)
    await publisher.publish("match.8", {"n": 0})
    fast = await Recorder.open(ws_url(gw))
    await fast.send({"type": "subscribe", "id": 1, "topics": ["match.8"]})
    await fast.wait_for(lambda m: m["type"] == "snapshot")
    slow = await RawClient.open(gw.port)
    await slow.send({"type": "subscribe", "id": 1, "topics": ["match.8"]})
    await slow.read_until(lambda m: m["type"] == "snapshot")
    return publisher, fast, slow


async def flood(publisher: RawPublisher) -> int:
    for n in range(1, EVENTS + 1):
        await publisher.publish("match.8", {"n": n, "pad": PAD})
    return EVENTS + 1


async def test_slow_client_is_conflated_and_catches_up(make_gateway, js):
    gw = await make_gateway(soft_limit=32 * 1024, hard_limit=64 * 1024 * 1024, slow_grace=60)
    publisher, fast, slow = await setup(gw, js)
    last = await flood(publisher)  # the slow client reads nothing meanwhile
    await fast.wait_for(lambda m: m.get("seq") == last, timeout=30)
    assert check_sequence(fast.of("match.8")) == last
    assert [m["type"] for m in fast.of("match.8")].count("snapshot") == 1
    assert gw.node.stats.slow_clients >= 1
    final = await slow.read_until(lambda m: m.get("seq") == last)
    assert final is not None and check_sequence(slow.of("match.8")) == last
    kinds = [m["type"] for m in slow.of("match.8")]
    assert kinds.count("snapshot") >= 2, "a conflated snapshot replaced skipped events"
    assert kinds.count("event") < EVENTS
    assert gw.node.stats.conflations >= 1
    slow.close()
    await fast.close()


async def test_slow_client_past_the_hard_limit_is_closed_4008(make_gateway, js):
    # Conflation keeps a slow client's backlog near the soft limit, so the hard
    # limit bites on bursts; with conflation off (soft above hard) it bites here.
    gw = await make_gateway(soft_limit=64 * 1024 * 1024, hard_limit=256 * 1024, slow_grace=60)
    publisher, fast, slow = await setup(gw, js)
    last = await flood(publisher)
    await fast.wait_for(lambda m: m.get("seq") == last, timeout=30)
    assert check_sequence(fast.of("match.8")) == last
    for _ in range(100):
        if gw.node.stats.slow_closes:
            break
        await asyncio.sleep(0.05)
    assert gw.node.stats.slow_closes == 1
    end = await slow.read_until(lambda m: False)
    assert end is None and slow.close_code == 4008
    for _ in range(100):
        if len(gw.node.clients) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(gw.node.clients) == 1  # only the fast one: the slow one's buffers are gone
    slow.close()
    await fast.close()


async def test_slow_client_past_the_time_bound_is_closed_4008(make_gateway, js):
    gw = await make_gateway(soft_limit=32 * 1024, hard_limit=64 * 1024 * 1024, slow_grace=1.0)
    publisher, fast, slow = await setup(gw, js)
    await flood(publisher)
    await asyncio.sleep(1.5)
    for _ in range(100):
        if gw.node.stats.slow_closes:
            break
        await asyncio.sleep(0.05)
    assert gw.node.stats.slow_closes == 1
    slow.close()
    await fast.close()
