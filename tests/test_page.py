"""The live page in a real headless Chromium (Debian's), driven by Playwright,
against the demo: the book ladder and the trade tape move; with the exchange
stopped the channels show as stale; when it returns they are live again,
without a reload. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support import REPO, gateway

pytestmark = pytest.mark.processes

SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a sandbox, on a closed network: no sandbox, no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; `make test` installs it (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1100})
        finally:
            browser.close()


def status_of(page: Page, channel: str) -> str:
    return str(page.eval_on_selector(f'#status tr[data-channel="{channel}"] td:nth-child(2)', "td => td.textContent"))


def compare_with_rest(page: Page, base: str, until: float) -> int:
    """Until ``until``: whenever the page holds the book of the seq that REST
    answers, they are the same, and the ladder's best bid is its. How often."""
    channel = "orderbook:BTC_USD:0.01"
    matched = 0
    while time.monotonic() < until:
        held = page.evaluate(f"() => books['{channel}'] || null")
        answer = httpx.get(base + "/v1/orderbook/BTC_USD?step=0.01&wait=0", timeout=10)
        if held is not None and answer.status_code == 200 and held["seq"] == answer.json()["seq"]:
            assert held["data"] == answer.json()["data"]
            best_bid = page.inner_text("#bids tr:first-child td:first-child")
            if page.evaluate(f"() => books['{channel}'].seq") == held["seq"]:
                assert best_bid == held["data"]["bids"][0][0]
            matched += 1
        time.sleep(0.7)
    return matched


@pytest.mark.timeout(150)
def test_the_page_follows_the_market_and_survives_the_exchange_going_away(page: Page, tmp_path: Path) -> None:
    """The page follows its order book and depth chart as diffs (books=diff):
    over more than a minute, through the exchange going away and coming back,
    every diff is proven (prev_seq and checksum), the ladder is the book, and
    the book the page holds is the REST snapshot of the same seq."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with gateway(tmp_path, {"GATEWAY_STALE_FACTOR": "2"}, command="demo") as gw:
        page.goto(gw.base + "/")
        started = time.monotonic()
        page.wait_for_selector("#bids tr", timeout=10_000)
        page.wait_for_selector("#trades tbody tr", timeout=10_000)
        book = page.inner_text("#book")
        tape = page.inner_text("#trades")
        # Both change within 5 s, from the stream alone.
        page.wait_for_function("b => document.querySelector('#book').innerText !== b", arg=book, timeout=5_000)
        page.wait_for_function("t => document.querySelector('#trades').innerText !== t", arg=tape, timeout=5_000)
        assert page.get_attribute("#book-panel", "data-status") == "live"
        matched = compare_with_rest(page, gw.base, time.monotonic() + 20)
        page.screenshot(path=str(SHOTS / "1-live.png"))

        os.kill(gw.process.pid, signal.SIGUSR1)  # the demo stops its simulated exchange
        page.wait_for_selector('#book-panel[data-status="stale"]', timeout=20_000)
        page.wait_for_function(
            """() => ['orderbook:BTC_USD:0.01', 'trades:BTC_USD', 'depth:BTC_USD']
                 .every(c => document.querySelector(`#status tr[data-channel="${c}"] td:nth-child(2)`)
                                     ?.textContent === 'stale')""",
            timeout=20_000,
        )
        page.screenshot(path=str(SHOTS / "2-stale.png"))
        assert page.get_attribute("#connection", "data-state") == "live"  # the gateway itself is fine

        os.kill(gw.process.pid, signal.SIGUSR1)  # and starts it again
        page.wait_for_selector('#book-panel[data-status="live"]', timeout=20_000)
        book = page.inner_text("#book")
        page.wait_for_function("b => document.querySelector('#book').innerText !== b", arg=book, timeout=10_000)
        assert status_of(page, "orderbook:BTC_USD:0.01") == "live"
        matched += compare_with_rest(page, gw.base, max(started + 65, time.monotonic() + 5))
        counts = page.inner_text("#book-check")
        page.screenshot(path=str(SHOTS / "3-live-again.png"))
    diffs, mismatches = (int(part.split()[0]) for part in counts.split("·"))
    print(f"the page over {time.monotonic() - started:.0f} s: {counts}; "
          f"{matched} times the REST snapshot of the same seq")
    assert mismatches == 0 and diffs >= 40 and matched >= 10
    assert errors == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("width", "height", "name"), [(1400, 1000, "desktop"), (390, 844, "phone")])
def test_the_page_shows_the_whole_market_at_a_desktop_and_a_phone_width(
    width: int, height: int, name: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; `make test` installs it (Debian package chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with gateway(tmp_path, {"GATEWAY_TOKENS": "page-token"}, command="demo") as gw, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # Someone else asks for a symbol the exchange does not have.
            assert gw.http.get("/v1/orderbook/BTC_XYZ?step=0.0001&wait=0").status_code == 503
            page.goto(gw.base + "/#token=page-token")
            page.wait_for_selector("#bids tr", timeout=15_000)
            page.wait_for_selector("#balances tbody tr", timeout=15_000)
            page.wait_for_function("() => asksDepth.data().length > 10 && bidsDepth.data().length > 10",
                                   timeout=15_000)
            page.wait_for_timeout(6_000)  # a status refresh, a few candles' updates
            # The depth chart is fitted to both sides of the book.
            fitted = page.evaluate("""() => {
                const range = depthChart.timeScale().getVisibleRange();
                const bids = bidsDepth.data(), asks = asksDepth.data();
                return {from: range.from, to: range.to, low: bids[0].time, high: asks[asks.length - 1].time};
            }""")
            assert fitted["from"] <= fitted["low"] and fitted["to"] >= fitted["high"], fitted
            # Balances readable, the exact string on hover.
            cells = page.eval_on_selector_all(
                "#balances tbody td:nth-child(2)", "tds => tds.map(td => [td.textContent, td.title])")
            assert cells and all(title.startswith(text) for text, title in cells), cells
            assert all(not (("." in text) and text.endswith("0")) for text, _ in cells), cells
            # The made-up symbol is not on this page's channel list.
            listed = page.eval_on_selector_all("#status tr", "trs => trs.map(tr => tr.dataset.channel)")
            assert "orderbook:BTC_XYZ:0.0001" not in listed and "orderbook:BTC_USD:0.01" in listed
            page.screenshot(path=str(SHOTS / f"4-{name}.png"), full_page=True)
            # The page is no wider than the screen (a wide table scrolls inside its panel).
            wide = page.evaluate("""() => [...document.querySelectorAll('header, main > section')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.id || e.tagName)""")
            assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), wide
            assert errors == []
        finally:
            browser.close()
