"""Made-up symbols never hold the upstream cap, and trade gaps are told: a
gateway following Mosquitto, where only BTC_USD ever gets data."""

from __future__ import annotations

import json
import re

from tests.support import EventStream, wait_for
from tests.world import World, start_flowing


def test_channels_that_never_get_data_are_released_and_answered_404(world: World) -> None:
    gw = world.gateway(
        GATEWAY_NO_DATA_RELEASE_S="2",
        GATEWAY_MAX_PENDING_UPSTREAM="3",
        GATEWAY_MAX_UPSTREAM="10",
        GATEWAY_UNKNOWN_TTL_S="600",
    )
    try:
        start_flowing(world, gw)
        fake = EventStream(f"{gw.base}/v1/stream?channels=orderbook:BTC_XYZ:0.0001")
        assert fake.status == 200
        for symbol in ("ABC_XYZ", "DEF_XYZ"):
            assert gw.http.get(f"/v1/orderbook/{symbol}?step=0.0001&wait=0").status_code == 503
        # Three wait for their first data: a fourth would wait with them.
        fourth = gw.http.get("/v1/orderbook/GHI_XYZ?step=0.0001&wait=0")
        assert fourth.status_code == 429
        assert fourth.json()["limit"] == "channels waiting for first data"
        # Channels that carry data are not held back by them.
        assert gw.http.get("/v1/trades/BTC_USD?wait=0").status_code == 200

        def released() -> bool:
            return not any("XYZ" in name for name in gw.channels())

        wait_for(released, 15, "the channels with no data released")
        again = gw.http.get("/v1/orderbook/BTC_XYZ?step=0.0001")
        assert again.status_code == 404
        assert again.headers["content-type"] == "application/problem+json"
        assert "no data from the exchange for orderbook:BTC_XYZ:0.0001" in again.json()["detail"]
        assert not released() or "orderbook:BTC_XYZ:0.0001" not in gw.channels()
        statuses = fake.named("status")
        assert any(s["status"] == "failed" and "is the symbol right" in s["reason"] for s in statuses)
        # The pending slots are free again for a new channel.
        assert gw.http.get("/v1/orderbook/GHI_XYZ?step=0.0001&wait=0").status_code == 503
        assert re.search(r"coinsuper_no_data_releases_total\{node=\"[^\"]+\"\} 3.0", gw.http.get("/metrics").text)
        fake.close()
    finally:
        gw.stop()


def test_a_trade_gap_is_a_status_event_and_a_count(world: World) -> None:
    gw = world.gateway()
    try:
        start_flowing(world, gw)
        stream = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD")
        world.tape.add(60)  # a full window
        wait_for(lambda: len(stream.named("trade")) >= 50, 10, "the trades")
        world.tape.add(120, push=False)  # the exchange moved on while we saw nothing
        world.tape.push()
        # (A "live" status may come first: the monitor may see the channel
        # live for the first time after the stream opened.)
        gaps = wait_for(lambda: [s for s in stream.named("status") if s["reason"] == "gap"], 10, "a gap status")
        assert len(gaps) == 1 and gaps[0]["channel"] == "trades:BTC_USD"
        assert gw.channels()["trades:BTC_USD"]["gaps"] == 1
        metrics = gw.http.get("/metrics").text
        assert re.search(r'coinsuper_trade_gaps_total\{kind="trades",node="[^"]+",param="",symbol="BTC_USD"\} 1.0', metrics)
        events = list(stream.events)
        at = next(i for i, e in enumerate(events) if e.get("event") == "status" and '"gap"' in e["data"])
        # The window's trades follow the status. (The monitor's own status
        # events, such as "live", may come at any time: they are not the gap's.)
        after = [e.get("event") for e in events[at + 1 :] if e.get("event") != "status"]
        assert after and set(after) == {"trade"}
        assert all('"gap"' not in e["data"] for e in events[at + 1 :] if e.get("event") == "status")
        assert json.loads(events[at]["data"])["status"] == "live"
        stream.close()
    finally:
        gw.stop()
