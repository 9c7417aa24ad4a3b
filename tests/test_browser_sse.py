"""Server-Sent Events in a real browser (Debian's headless Chromium through
Playwright, as in tests/test_browser.py): a bare ``EventSource``, the live
page on ``?transport=sse`` across a gateway restart, and client.js falling
back to SSE when WebSocket upgrades fail."""

from __future__ import annotations

import asyncio

from scorecast.gateway.settings import GatewaySettings
from scorecast.natsserver import free_port
from tests.support import RawPublisher
from tests.test_browser import Matches, browser_page, require_browser, start_gateway

COLLECT = """
([url, count]) => new Promise((resolve, reject) => {
  const source = new EventSource(url);
  const seen = [];
  for (const type of ["welcome", "snapshot", "event"]) {
    source.addEventListener(type, (e) => {
      seen.push({ event: type, id: e.lastEventId, data: JSON.parse(e.data) });
      if (seen.filter((m) => m.event !== "welcome").length === count) {
        source.close();
        resolve(seen);
      }
    });
  }
  setTimeout(() => reject(new Error(JSON.stringify(seen))), 15000);
})
"""


async def test_event_source_gets_snapshot_then_events(js, nats_server):
    require_browser()
    settings = GatewaySettings(nats=(nats_server.url,), port=free_port(), node="sse-browser")
    publisher = RawPublisher(js)
    for n in range(3):
        await publisher.publish("match.1", {"n": n})
    gateway = await start_gateway(settings)
    try:
        async with browser_page() as page:
            await page.goto(f"http://127.0.0.1:{settings.port}/healthz")
            url = "/sse?topics=match.1,match.2"
            task = asyncio.ensure_future(page.evaluate(COLLECT, [url, 5]))
            for _ in range(300):  # until the page's stream is past its snapshot
                topic = gateway.node.hub.topic("match.1")
                if task.done() or (topic is not None and topic.subscribers):
                    break
                await asyncio.sleep(0.05)
            for n in range(3, 6):
                await publisher.publish("match.1", {"n": n})
            seen = await task
            assert seen[0]["event"] == "welcome"
            frames = [m for m in seen if m["event"] != "welcome"]
            one = [m["data"] for m in frames if m["data"]["topic"] == "match.1"]
            assert [(f["type"], f["seq"]) for f in one] == [
                ("snapshot", 3), ("event", 4), ("event", 5), ("event", 6)
            ]  # fmt: skip
            assert frames[-1]["id"] == "match.1:6,match.2:0"
    finally:
        await gateway.stop()


async def test_live_page_on_sse_survives_a_restart_by_last_event_id(js, nats_server):
    require_browser()
    settings = GatewaySettings(nats=(nats_server.url,), port=free_port(), node="sse-page")
    matches = Matches(RawPublisher(js))
    await matches.kickoff(1, ("Eastport City", "EPC"), ("Northbridge Rovers", "NBR"))
    gateway = await start_gateway(settings)
    try:
        async with browser_page() as page:
            await page.goto(f"http://127.0.0.1:{settings.port}/?transport=sse#match=1")
            await page.wait_for_selector("#status[data-status=connected]")
            await page.wait_for_selector("#detail .team.home .team-code:text('EPC')")
            await page.wait_for_function(
                "document.querySelector('#detail .watching').textContent === '1 watching'"
            )
            await matches.goal(1, "home", "Okafor")
            await page.wait_for_function(
                "document.querySelector('#detail .score-home').textContent === '1'"
            )
            reopened = await page.evaluate("window.scorecast.client.reconnects")
            # the gateway goes away, a goal meanwhile, a new gateway on the port
            await gateway.stop()
            await page.wait_for_selector("#status[data-status=reconnecting]")
            await matches.goal(1, "away", "Dubois")
            gateway = await start_gateway(settings)
            await page.wait_for_selector("#status[data-status=connected]", timeout=20_000)
            await page.wait_for_function(
                "document.querySelector('#detail .score-away').textContent === '1'"
            )
            await matches.goal(1, "home", "Okafor")
            await page.wait_for_function(
                "document.querySelector('#detail .score-home').textContent === '2'"
            )
            # the browser reconnected by itself, resuming with Last-Event-ID
            assert gateway.sse_resumes >= 1
            assert await page.evaluate("window.scorecast.client.reconnects") == reopened
            assert await page.evaluate("window.scorecast.client.using") == "sse"
            counters = await page.evaluate("window.scorecast.client.state.counters")
            assert counters["gaps"] == 0 and counters["duplicates"] == 0, counters
            assert page.errors == []
    finally:
        await gateway.stop()


FALLBACK = """
async ([wsUrl, sseUrl]) => {
  const { ScorecastClient } = await import("/client.js");
  const client = new ScorecastClient(wsUrl, {
    topics: ["match.7"], sseUrl, backoff: { minDelay: 10, maxDelay: 50 },
  });
  window.fallback = client;
  return await new Promise((resolve) => {
    client.on("update", (u) => resolve({ using: client.using, seq: u.seq, state: u.state }));
    client.connect();
  });
}
"""


async def test_client_js_falls_back_to_sse_when_upgrades_fail(js, nats_server):
    require_browser()
    settings = GatewaySettings(nats=(nats_server.url,), port=free_port(), node="fallback")
    publisher = RawPublisher(js)
    await publisher.publish("match.7", {"home": 1})
    gateway = await start_gateway(settings)
    base = f"127.0.0.1:{settings.port}"
    try:
        async with browser_page() as page:
            await page.goto(f"http://{base}/healthz")
            # /blocked answers 404 to the upgrade, as a proxy that blocks them would
            got = await page.evaluate(FALLBACK, [f"ws://{base}/blocked", f"http://{base}/sse"])
            assert got == {"using": "sse", "seq": 1, "state": {"home": 1}}
            await publisher.publish("match.7", {"home": 2})
            await page.wait_for_function(
                "window.fallback.get('match.7')?.home === 2", timeout=10_000
            )
    finally:
        await gateway.stop()
