"""The REST and SSE contract, against a gateway fed by Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ENV, EventStream, GatewayProcess, Mosquitto, Publisher, sample, wait_for

pytestmark = pytest.mark.processes

BOOK_TOPIC = ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.01"
TRADES_TOPIC = ENV + "/api/ws/v1/market/tickers/BTC_USD"


class HttpWorld:
    def __init__(self, mosquitto: Mosquitto, publisher: Publisher, gw: GatewayProcess) -> None:
        self.mosquitto, self.publisher, self.gw = mosquitto, publisher, gw


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpWorld]:
    workdir: Path = tmp_path_factory.mktemp("http")
    mosquitto = Mosquitto(workdir)
    mosquitto.start()
    publisher = Publisher(mosquitto.tcp_port)
    gw = GatewayProcess(
        workdir,
        {
            "COINSUPER_URL": mosquitto.url("tcp"),
            "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01,trades:BTC_USD",
            "GATEWAY_MAX_CHANNELS_PER_STREAM": "3",
            "GATEWAY_MAX_UPSTREAM": "8",
            "GATEWAY_HEARTBEAT_S": "1",
            "GATEWAY_STALE_FACTOR": "1000",
            "GATEWAY_IDLE_RELEASE_S": "2",
        },
    )
    wait_for(lambda: all(c["link_state"] == "up" for c in gw.channels().values()), 15, "links up")
    publisher.publish(BOOK_TOPIC, sample("orderBook_BTC_USD_0.01.json"))
    publisher.publish(TRADES_TOPIC, sample("tickers_BTC_USD.json"))
    wait_for(lambda: gw.http.get("/v1/trades/BTC_USD").status_code == 200, 10, "trades")
    wait_for(lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01").status_code == 200, 10, "book")
    try:
        yield HttpWorld(mosquitto, publisher, gw)
    finally:
        gw.stop()
        publisher.close()
        mosquitto.kill()


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize("spelling", ["BTC_USD", "BTC-USD", "btc_usd", "BTC%2FUSD", "btc%2fusd"])
def test_every_symbol_spelling_answers_the_same_book(served: HttpWorld, spelling: str) -> None:
    body = served.gw.http.get(f"/v1/orderbook/{spelling}?step=0.01").json()
    assert body["symbol"] == "BTC/USD" and body["channel"] == "orderbook:BTC_USD:0.01"


def test_bad_parameters_are_400_problems_naming_what_is_allowed(served: HttpWorld) -> None:
    http = served.gw.http
    body = problem(http.get("/v1/orderbook/BTCUSD?step=0.01"), 400)
    assert "BTC_USD" in str(body["detail"])
    body = problem(http.get("/v1/orderbook/BTC_USD?step=0.5"), 400)
    assert "1.0, 0.1, 0.01" in str(body["detail"]) and body["parameter"] == "step"
    body = problem(http.get("/v1/orderbook/BTC_USD"), 400)
    assert body["parameter"] == "step"
    body = problem(http.get("/v1/kline/BTC_USD?range=2m"), 400)
    assert "1m, 5m" in str(body["detail"])
    body = problem(http.get("/v1/trades/BTC_USD?limit=0"), 400)
    assert "1 to 1000" in str(body["detail"])
    problem(http.get("/v1/trades/BTC_USD?limit=abc"), 400)
    problem(http.get("/v1/trades/BTC_USD?limit=\u00b2"), 400)  # '²' is a digit to str.isdigit, not to int()
    problem(http.get("/v1/kline/BTC_USD?range=\u00b2"), 400)
    problem(http.get("/v1/klines/BTC_USD?range=1m&limit=100000"), 400)
    body = problem(http.get("/v1/stream?channels=candles:BTC_USD"), 400)
    assert "orderbook" in str(body["detail"])
    problem(http.get("/v1/stream"), 400)
    problem(http.get("/v1/depth/BTC_USD?wait=-5"), 400)
    problem(http.get("/v1/nothing-here"), 404)


def test_caps_are_429_problems_naming_the_cap(served: HttpWorld) -> None:
    http = served.gw.http
    body = problem(http.get("/v1/stream?channels=depth:AA_USD,depth:BB_USD,depth:CC_USD,depth:DD_USD"), 429)
    assert body["limit"] == "channels per stream" and body["cap"] == 3
    for n in range(10):
        response = http.get(f"/v1/depth/X{n}_USD?wait=0")
        if response.status_code == 429:
            assert problem(response, 429)["limit"] == "upstream subscriptions"
            break
        assert response.status_code == 503
    else:
        pytest.fail("the upstream cap was never reached")
    # Channels nobody follows are released after the idle time; pinned ones stay.
    wait_for(lambda: not any(name.startswith("depth:X") for name in served.gw.channels()), 10, "idle release")
    assert {"orderbook:BTC_USD:0.01", "trades:BTC_USD"} <= served.gw.channels().keys()


def test_private_channels_without_configuration_are_404(served: HttpWorld) -> None:
    body = problem(served.gw.http.get("/v1/stream?channels=fills"), 404)
    assert "not configured" in str(body["detail"])


def test_no_data_yet_waits_then_503_with_retry_after(served: HttpWorld) -> None:
    start = time.monotonic()
    response = served.gw.http.get("/v1/depth/ETH_USD?wait=400")
    assert time.monotonic() - start >= 0.4
    problem(response, 503)
    assert response.headers["retry-after"] == "1"


def test_a_first_request_waits_for_the_first_push(served: HttpWorld) -> None:
    topic = ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.1"
    raw = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    raw["step"] = "0.1"
    for side, sign in (("bids", -1), ("asks", 1)):  # on the 0.1 grid, as the exchange aggregates
        for i, level in enumerate(raw[side]):
            level["limitPrice"] = f"{6675 + sign * (0.5 + i):.1f}"

    def publish_soon() -> None:
        wait_for(lambda: served.gw.channels().get("orderbook:BTC_USD:0.1", {}).get("link_state") == "up", 10, "link")
        served.publisher.publish(topic, json.dumps(raw).encode())

    threading.Thread(target=publish_soon, daemon=True).start()
    response = served.gw.http.get("/v1/orderbook/BTC_USD?step=0.1&wait=8000")
    assert response.status_code == 200
    assert response.json()["data"]["step"] == "0.1"


def test_etag_and_if_none_match(served: HttpWorld) -> None:
    http = served.gw.http
    first = http.get("/v1/orderbook/BTC_USD?step=0.01")
    etag = first.headers["etag"]
    again = http.get("/v1/orderbook/BTC_USD?step=0.01", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = http.get("/v1/orderbook/BTC_USD?step=0.01", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


def test_health_and_channels(served: HttpWorld) -> None:
    http = served.gw.http
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    report = served.gw.channels()["orderbook:BTC_USD:0.01"]
    assert report["status"] == "live" and report["messages"] >= 1 and report["rejected"] == 0


def test_stream_sends_snapshots_at_once_then_one_event_per_new_trade(served: HttpWorld) -> None:
    url = f"{served.gw.base}/v1/stream?channels=orderbook:BTC_USD:0.01,trades:BTC_USD"
    stream = EventStream(url)
    assert stream.status == 200
    book = wait_for(lambda: stream.named("orderbook"), 5, "the current book")[0]
    assert book["channel"] == "orderbook:BTC_USD:0.01" and book["data"]["bids"][0] == ["6674.56", "0.8490"]
    assert stream.named("trade") == []  # trades are a log: no replay of history on connect

    window = json.loads(sample("tickers_BTC_USD.json"))
    newest = int(window[0]["timestamp"])
    new = [dict(window[0], timestamp=newest + 5, price="6100.00"), dict(window[0], timestamp=newest + 5, price="6100.00")]
    served.publisher.publish(TRADES_TOPIC, json.dumps(new + window[:48]).encode())
    trades = wait_for(lambda: len(stream.named("trade")) >= 2 and stream.named("trade"), 5, "two trade events")
    assert len(trades) == 2
    assert [t["data"]["price"] for t in trades] == ["6100.00", "6100.00"]
    assert trades[1]["seq"] == trades[0]["seq"] + 1
    ids = [e["id"] for e in stream.events if "id" in e]
    assert len(ids) == len(set(ids))
    wait_for(lambda: ": heartbeat" in stream.comments, 5, "a heartbeat comment")
    stream.close()
