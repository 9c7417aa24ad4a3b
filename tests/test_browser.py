"""The live-scores page in a real browser: Debian's headless Chromium driven by
Playwright, against a real gateway on a real nats-server.

Needs ``apt-get install -y chromium`` (as root; /usr/bin/chromium) and
``pip install playwright pillow``. Never ``playwright install``: it downloads a
browser build of its own, which this project does not use. Without Chromium
the test fails and says so: it is never skipped.

``python -m tests.test_browser docs/screenshot.png`` saves a screenshot of the
page with simulated matches (the one in the docs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

from scorecast.gateway.server import Gateway
from scorecast.gateway.settings import GatewaySettings
from scorecast.natsserver import NatsServer, free_port
from scorecast.protocol.merge_patch import diff
from scorecast.publishers.football import live_line
from scorecast.publishers.settings import PublisherSettings, SimulatorSettings
from tests.support import RawPublisher

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 720}
BOARD = "football.live"


def require_browser():
    """Playwright's async API, or a failure that says how to install what is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package as root with "
            "`apt-get update && apt-get install -y chromium` (never `playwright install`)",
            pytrace=False,
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install playwright`", pytrace=False)
    return async_playwright


@contextlib.asynccontextmanager
async def browser_page():
    async_playwright = require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.errors = errors
            yield page
        finally:
            await browser.close()


class Matches:
    """Match topics and the football.live board, shaped as the simulator shapes them."""

    def __init__(self, publisher: RawPublisher) -> None:
        self.publisher = publisher
        self.states: dict[int, dict] = {}

    async def kickoff(self, match_id: int, home: tuple[str, str], away: tuple[str, str]) -> None:
        state = {
            "id": match_id,
            "home": {"name": home[0], "code": home[1], "score": 0, "red": 0, "subs": 0},
            "away": {"name": away[0], "code": away[1], "score": 0, "red": 0, "subs": 0},
            "minute": 0,
            "period": "1H",
            "status": "live",
            "events": [{"minute": 0, "kind": "kickoff"}],
        }
        await self._publish(match_id, "kickoff", state)

    async def clock(self, match_id: int, minute: int) -> None:
        await self._publish(match_id, "clock", {**self.states[match_id], "minute": minute})

    async def goal(self, match_id: int, team: str, player: str) -> None:
        state = self.states[match_id]
        scored = {**state[team], "score": state[team]["score"] + 1}
        after = {**state, team: scored}
        score = f"{after['home']['score']}-{after['away']['score']}"
        event = {"minute": state["minute"], "kind": "goal", "team": team, "player": player}
        after["events"] = [*state["events"], {**event, "score": score}][-5:]
        await self._publish(match_id, "goal", after)

    async def _publish(self, match_id: int, kind: str, state: dict) -> None:
        before = self.states.get(match_id)
        self.states[match_id] = state
        await self.publisher.publish(f"match.{match_id}", diff(before, state), kind=kind)
        line = live_line(state)
        if before is None or line != live_line(before):
            await self.publisher.publish(BOARD, {str(match_id): line}, kind=kind)


async def start_gateway(settings: GatewaySettings) -> Gateway:
    gateway = Gateway(settings)
    await gateway.start()
    return gateway


def assert_not_blank(path: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        spread = ImageStat.Stat(rgb.convert("L")).stddev[0]
    assert colours is not None and len(colours) > 200, f"{path}: too few colours"
    assert spread > 10, f"{path}: looks blank (luminance stddev {spread:.1f})"


async def board_shows(page, match_id: int, score: str) -> None:
    """Wait until the live board's row of ``match_id`` shows ``score``."""
    row = f'#matches li.match[data-match-id="{match_id}"] .score'
    await page.wait_for_function(
        "([row, score]) => document.querySelector(row)?.textContent.includes(score)",
        arg=[row, score],
    )


async def test_live_page_follows_goals_and_survives_gateway_restarts(js, nats_server, tmp_path):
    require_browser()
    settings = GatewaySettings(
        nats=(nats_server.url,), port=free_port(), node="browser", drain_window=0.3
    )
    matches = Matches(RawPublisher(js))
    await matches.kickoff(1, ("Eastport City", "EPC"), ("Northbridge Rovers", "NBR"))
    await matches.kickoff(2, ("Ashford Athletic", "ASH"), ("Millbrook FC", "MIL"))
    await matches.clock(1, 12)
    gateway = await start_gateway(settings)
    try:
        async with browser_page() as page:
            await page.goto(f"http://127.0.0.1:{settings.port}/")
            status = page.locator("#status")
            await page.wait_for_selector("#status[data-status=connected]")
            row = page.locator('#matches li.match[data-match-id="1"]')
            await row.wait_for()
            assert await page.locator("#matches li.match").count() == 2
            await row.click()
            home_score = page.locator("#detail .score-home")
            await page.wait_for_selector("#detail .team.home .team-code:text('EPC')")
            assert await home_score.text_content() == "0"
            assert await page.locator("#detail .minute").text_content() == "12'"
            assert page.url.endswith("#match=1")

            # a goal: the detail and the board row change
            await matches.goal(1, "home", "Okafor")
            await page.wait_for_function(
                "document.querySelector('#detail .score-home').textContent === '1'"
            )
            await board_shows(page, 1, "1 \u2013 0")  # football.live: a separate topic
            assert "Okafor" in await page.locator("#detail .events").text_content()

            # the gateway goes away; a goal while it is gone; a new gateway on
            # the same port: the page reconnects, resumes, and shows both goals
            await gateway.stop()
            await page.wait_for_selector("#status[data-status=reconnecting]")
            await matches.goal(1, "away", "Dubois")
            gateway = await start_gateway(settings)
            await page.wait_for_selector("#status[data-status=connected]", timeout=15_000)
            await page.wait_for_function(
                "document.querySelector('#detail .score-away').textContent === '1'"
            )
            await matches.goal(1, "home", "Okafor")
            await page.wait_for_function(
                "document.querySelector('#detail .score-home').textContent === '2'"
            )
            await board_shows(page, 1, "2 \u2013 1")  # football.live: a separate topic

            # a drain: the hint shows as "draining", and the page comes back
            drain = asyncio.create_task(gateway.drain())
            await page.wait_for_function(
                "window.scorecast.statuses.includes('draining')", timeout=5_000
            )
            await drain
            await gateway.stop()
            gateway = await start_gateway(settings)
            await page.wait_for_selector("#status[data-status=connected]", timeout=15_000)
            await matches.clock(1, 13)
            await page.wait_for_function(
                "document.querySelector('#detail .minute').textContent === \"13'\""
            )

            counters = await page.evaluate("window.scorecast.client.state.counters")
            assert counters["gaps"] == 0 and counters["duplicates"] == 0, counters
            statuses = await page.evaluate("window.scorecast.statuses")
            assert statuses[-1] == "connected" and "draining" in statuses
            assert await status.get_attribute("data-status") == "connected"
            assert page.errors == []

            shot = tmp_path / "page.png"
            await page.screenshot(path=str(shot))
            assert_not_blank(shot)
    finally:
        await gateway.stop()


# --- the docs' screenshot -------------------------------------------------------------


async def save_screenshot(path: Path) -> None:
    """The page with simulated matches, a few minutes in, one match opened."""
    from scorecast.publishers.simulator import run_simulator

    store = tempfile.mkdtemp(prefix="scorecast-shot-")
    nats_server = NatsServer(store_dir=store)
    nats_server.start()
    stop = asyncio.Event()
    gateway = None
    try:
        simulator = asyncio.create_task(
            run_simulator(
                PublisherSettings(nats=(nats_server.url,)),
                SimulatorSettings(matches=6, minute_seconds=0.15, seed=7),
                stop=stop,
            )
        )
        settings = GatewaySettings(nats=(nats_server.url,), port=free_port(), node="docs")
        gateway = await start_gateway(settings)
        await asyncio.sleep(12)  # about 80 match minutes: goals, cards, a half time
        async with browser_page() as page:
            await page.goto(f"http://127.0.0.1:{settings.port}/#match=1002")
            await page.wait_for_selector("#matches li.match")
            await page.wait_for_selector("#detail:not(.loading)")
            await asyncio.sleep(0.5)
            await page.screenshot(path=str(path))
        assert_not_blank(path)
        stop.set()
        await asyncio.wait_for(simulator, 10)
    finally:
        if gateway is not None:
            await gateway.stop()
        nats_server.stop()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png")
    asyncio.run(save_screenshot(target))
    print(f"saved {target}")
