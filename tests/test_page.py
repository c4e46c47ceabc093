"""The live page in a real headless Chromium (Debian's), driven by Playwright,
against the demo: the book ladder and the trade tape move; with the exchange
stopped the channels show as stale; when it returns they are live again,
without a reload. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support import REPO, gateway

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


@pytest.mark.timeout(120)
def test_the_page_follows_the_market_and_survives_the_exchange_going_away(page: Page, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with gateway(tmp_path, {"GATEWAY_STALE_FACTOR": "2"}, command="demo") as gw:
        page.goto(gw.base + "/")
        page.wait_for_selector("#bids tr", timeout=10_000)
        page.wait_for_selector("#trades tbody tr", timeout=10_000)
        book = page.inner_text("#book")
        tape = page.inner_text("#trades")
        # Both change within 5 s, from the stream alone.
        page.wait_for_function("b => document.querySelector('#book').innerText !== b", arg=book, timeout=5_000)
        page.wait_for_function("t => document.querySelector('#trades').innerText !== t", arg=tape, timeout=5_000)
        assert page.get_attribute("#book-panel", "data-status") == "live"
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
        page.screenshot(path=str(SHOTS / "3-live-again.png"))
    assert errors == []
