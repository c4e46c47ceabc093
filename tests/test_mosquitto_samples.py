"""The gateway against Debian's Mosquitto: the exchange's own sample payloads,
published by an independent client, come out of REST in normalized form,
string for string, over both transports; Mosquitto's log shows the logins."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ENV,
    Mosquitto,
    Publisher,
    expected_client_id,
    gateway,
    sample,
    wait_for,
)

TOPICS = {
    "orderbook:BTC_USD:0.01": ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.01",
    "depth:BTC_USD": ENV + "/api/ws/v1/market/depth/BTC_USD",
    "kline:BTC_USD:1m": ENV + "/api/ws/v1/market/kline/BTC_USD/60000",
    "trades:BTC_USD": ENV + "/api/ws/v1/market/tickers/BTC_USD",
}
FILES = {
    "orderbook:BTC_USD:0.01": "orderBook_BTC_USD_0.01.json",
    "depth:BTC_USD": "depth_BTC_USD.json",
    "kline:BTC_USD:1m": "kline_BTC_USD_60000.json",
    "trades:BTC_USD": "tickers_BTC_USD.json",
}
ROUTES = {
    "orderbook:BTC_USD:0.01": "/v1/orderbook/BTC_USD?step=0.01",
    "depth:BTC_USD": "/v1/depth/BTC_USD",
    "kline:BTC_USD:1m": "/v1/kline/BTC_USD?range=1m",
    "trades:BTC_USD": "/v1/trades/BTC_USD?limit=50",
}


def expected(channel: str) -> tuple[Any, int | None]:
    """The normalized form of docs/api.md, restated from the raw sample."""
    raw = json.loads(sample(FILES[channel]))
    if channel.startswith("orderbook"):
        return {
            "step": "0.01",
            "bids": [[level["limitPrice"], level["quantity"]] for level in raw["bids"]],
            "asks": [[level["limitPrice"], level["quantity"]] for level in raw["asks"]],
        }, raw["timestamp"]
    if channel.startswith("depth"):
        return {
            "depth_percent": "0.01",
            "asks_min_price": "6674.89",
            "bids_max_price": "6674.56",
            "bids": [[level["price"], level["quantity"]] for level in raw["bids"]],
            "asks": [[level["price"], level["quantity"]] for level in raw["asks"]],
        }, None
    if channel.startswith("kline"):
        return {
            "range": "1m",
            "range_ms": 60000,
            "open_ts": 1532686140000,
            "open": "6616.40",
            "high": "6616.48",
            "low": "6616.40",
            "close": "6616.45",
            "volume": "31.76239814",
        }, 1532686140000
    return [
        {"price": t["price"], "quantity": t["quantity"], "side": t["action"].lower(), "ts": t["timestamp"]}
        for t in raw
    ], raw[0]["timestamp"]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_samples_come_out_normalized(mosquitto: Mosquitto, tmp_path: Path, transport: str) -> None:
    env = {"COINSUPER_URL": mosquitto.url(transport), "COINSUPER_SUBSCRIBE": ",".join(TOPICS)}
    publisher = Publisher(mosquitto.tcp_port)
    with gateway(tmp_path, env) as gw:
        wait_for(
            lambda: all(c["link_state"] == "up" for c in gw.channels().values()) and len(gw.channels()) == 4,
            15,
            "all four links up",
        )
        for channel, topic in TOPICS.items():
            publisher.publish(topic, sample(FILES[channel]))
        for channel, route in ROUTES.items():
            response = wait_for(
                lambda route=route: (r := gw.http.get(route)).status_code == 200 and r,
                10,
                f"{route} to answer",
            )
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            data, exchange_ts = expected(channel)
            assert body["data"] == data
            assert body["channel"] == channel
            assert body["symbol"] == "BTC/USD"
            assert body["seq"] >= 1
            assert body["exchange_ts"] == exchange_ts
            assert isinstance(body["received_ts"], int)
            assert body["stale"] is False
        # The bids and asks of a book are best first.
        book = gw.http.get(ROUTES["orderbook:BTC_USD:0.01"]).json()["data"]
        assert book["bids"][0] == ["6674.56", "0.8490"] and book["asks"][0] == ["6674.89", "0.0524"]
    publisher.close()

    # Mosquitto's own log: protocol 3.1.1 (p2), the public user, one client id per topic.
    log = mosquitto.log_text()
    logins = re.findall(r"New client connected from \S+ as (\S+) \(p2, c1, k60, u'api_subscriber'\)", log)
    assert sorted(logins) == sorted(expected_client_id(topic) for topic in TOPICS.values())
    for topic in TOPICS.values():
        client_id = expected_client_id(topic)
        assert re.search(rf"Received SUBSCRIBE from {client_id}\n\d+: \t{re.escape(topic)} \(QoS", log)


def test_a_shared_link_carries_every_public_topic(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {
        "COINSUPER_URL": mosquitto.url("tcp"),
        "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01,trades:BTC_USD",
        "COINSUPER_SHARED_LINK": "true",
    }
    publisher = Publisher(mosquitto.tcp_port)
    with gateway(tmp_path, env) as gw:
        wait_for(lambda: len(gw.channels()) == 2 and all(c["link_state"] == "up" for c in gw.channels().values()),
                 15, "the shared link up")
        # A channel asked for later is added to the same live connection.
        assert gw.http.get("/v1/depth/BTC_USD?wait=0").status_code == 503
        wait_for(lambda: "Received SUBSCRIBE" in mosquitto.log_text() and TOPICS["depth:BTC_USD"] in mosquitto.log_text(),
                 10, "the late subscription")
        for channel in ("orderbook:BTC_USD:0.01", "trades:BTC_USD", "depth:BTC_USD"):
            publisher.publish(TOPICS[channel], sample(FILES[channel]))
        for channel in ("orderbook:BTC_USD:0.01", "trades:BTC_USD", "depth:BTC_USD"):
            body = wait_for(lambda c=channel: (r := gw.http.get(ROUTES[c])).status_code == 200 and r.json(), 10, channel)
            assert body["data"] == expected(channel)[0]
        assert {c["link"] for c in gw.channels().values()} == {"public"}
    publisher.close()
    logins = re.findall(r"New client connected from \S+ as (\S+) \(p2, c1, k60, u'api_subscriber'\)",
                        mosquitto.log_text())
    assert logins == [expected_client_id(ENV)]


def test_fixture_samples_match_the_shared_ones() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "samples"
    if not shared.is_dir():
        pytest.skip("no shared/ beside this checkout")
    for name in FILES.values():
        assert (shared / name).read_bytes() == sample(name), name
