"""The client against a running gateway (see conftest.py)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
from decimal import Decimal
from typing import Literal

import pytest
from coinsuper_gateway_client import (
    GatewayClient,
    GatewayError,
    GatewayStream,
    StreamEvent,
    StreamRefused,
    __version__,
)

Transport = Literal["sse", "websocket"]
TRANSPORTS: list[Transport] = ["sse", "websocket"]


def test_the_distribution_is_typed_and_versioned() -> None:
    assert importlib.metadata.version("coinsuper-gateway-client") == __version__
    assert importlib.resources.files("coinsuper_gateway_client").joinpath("py.typed").is_file()
    requires = importlib.metadata.requires("coinsuper-gateway-client") or []
    assert sorted(r.split(">")[0] for r in requires if "extra ==" not in r) == ["httpx", "httpx-ws"]


async def test_market_snapshots(base_url: str) -> None:
    async with GatewayClient(base_url) as gateway:
        book = await gateway.orderbook("BTC_USD", "0.01", wait_ms=5000)
        assert book["channel"] == "orderbook:BTC_USD:0.01" and book["symbol"] == "BTC/USD"
        assert book["data"]["bids"] and book["data"]["asks"]
        best_bid, best_ask = (Decimal(book["data"][side][0][0]) for side in ("bids", "asks"))
        assert best_bid < best_ask  # exact decimal strings
        assert (await gateway.snapshot("orderbook:BTC_USD:0.01"))["channel"] == book["channel"]
        depth = await gateway.depth("BTC-USD", wait_ms=5000)
        assert depth["channel"] == "depth:BTC_USD" and depth["data"]["asks"]
        candle = await gateway.candle("BTC/USD", "1m", wait_ms=5000)
        assert candle["data"]["range"] == "1m" and Decimal(candle["data"]["high"]) >= Decimal(candle["data"]["low"])
        candles = await gateway.candles("BTC_USD", "1m", limit=5)
        assert 1 <= len(candles["data"]) <= 5 and candles["data"][-1]["open_ts"] == candle["data"]["open_ts"]
        trades = await gateway.trades("BTC_USD", limit=3, wait_ms=5000)
        assert len(trades["data"]) <= 3 and {t["side"] for t in trades["data"]} <= {"buy", "sell"}
        assert (await gateway.channels())["channels"]
        answered = (await gateway.http.get(base_url + "/readyz")).status_code
        assert await gateway.ready() == (answered == 200)


async def test_a_bad_parameter_is_a_problem_naming_it(base_url: str) -> None:
    async with GatewayClient(base_url) as gateway:
        with pytest.raises(GatewayError) as caught:
            await gateway.orderbook("BTC_USD", "0.5")
        assert caught.value.status == 400
        assert caught.value.problem["parameter"] == "step" and "0.01" in caught.value.problem["allowed"]
        with pytest.raises(GatewayError) as caught:
            await gateway.trades("BTC_USD", limit=0)
        assert caught.value.problem["parameter"] == "limit"
        with pytest.raises(ValueError, match="not a channel"):
            await gateway.snapshot("nonsense")


async def test_the_account_needs_the_token(base_url: str, token: str) -> None:
    async with GatewayClient(base_url) as anonymous:
        with pytest.raises(GatewayError) as caught:
            await anonymous.assets()
        assert caught.value.status == 401
    async with GatewayClient(base_url, token=token) as gateway:
        assets = await gateway.assets(wait_ms=5000)
        assert assets["channel"] == "assets" and assets["data"]["balances"]
        for balance in assets["data"]["balances"].values():
            assert Decimal(balance["total"]) >= 0  # every digit the exchange sent
        orders = await gateway.orders(wait_ms=5000)
        assert orders["channel"] == "orders"
        assert all(o["state"] == "new" for o in (await gateway.orders(state="new"))["data"])
        fills = await gateway.fills(limit=10, wait_ms=5000)
        assert fills["channel"] == "fills" and len(fills["data"]) <= 10


async def _collect(stream: GatewayStream, until: set[str], timeout: float = 20) -> list[StreamEvent]:
    """Events until one of each name in ``until`` has come."""
    events: list[StreamEvent] = []
    async with asyncio.timeout(timeout), stream:
        async for event in stream:
            events.append(event)
            if until <= {e.event for e in events}:
                return events
    raise AssertionError("the stream ended")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_streams_give_snapshots_and_trades(base_url: str, transport: Transport) -> None:
    async with GatewayClient(base_url) as gateway:
        stream = gateway.stream(["orderbook:BTC_USD:0.01", "trades:BTC_USD"], transport=transport)
        events = await _collect(stream, {"orderbook", "trade"})
    book = next(e for e in events if e.event == "orderbook")
    assert book.id is not None and book.data["channel"] == "orderbook:BTC_USD:0.01"
    trade = next(e for e in events if e.event == "trade")
    assert Decimal(trade.data["data"]["price"]) > 0
    assert stream.last_event_id == events[-1].id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resuming_gives_each_trade_once(base_url: str, transport: Transport) -> None:
    first = GatewayStream(base_url, ["trades:BTC_USD"], transport=transport)
    seen = [e for e in await _collect(first, {"trade"}) if e.event == "trade"]
    # A second stream resumes from the first one's place: no trade twice.
    again = GatewayStream(base_url, ["trades:BTC_USD"], transport=transport, last_event_id=first.last_event_id)
    later = [e for e in await _collect(again, {"trade"}) if e.event == "trade"]
    assert not {e.id for e in seen} & {e.id for e in later}
    assert all(e.event != "reset" for e in later)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_unknown_position_is_a_reset(base_url: str, transport: Transport) -> None:
    stream = GatewayStream(base_url, ["orderbook:BTC_USD:0.01"], transport=transport, last_event_id="0000-1")
    events = await _collect(stream, {"reset", "orderbook"})
    assert events[0].event == "reset" and events[0].id is None
    assert [e.event for e in events[1:]] == ["orderbook"]  # a fresh snapshot follows


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_stream_raises(base_url: str, transport: Transport) -> None:
    with pytest.raises(StreamRefused) as caught:
        await _collect(GatewayStream(base_url, ["orderbook:BTC_USD:0.5"], transport=transport), {"x"})
    assert caught.value.status == 400 and caught.value.problem["parameter"]
    with pytest.raises(StreamRefused) as caught:  # private channels need the token
        await _collect(GatewayStream(base_url, ["fills"], transport=transport), {"x"})
    assert caught.value.status == 401


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_token_opens_private_channels(base_url: str, token: str, transport: Transport) -> None:
    async with GatewayClient(base_url, token=token) as gateway:
        events = await _collect(gateway.stream(["assets"], transport=transport), {"assets"})
    assert events[-1].data["channel"] == "assets" and events[-1].data["data"]["balances"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_in_diff_mode_the_stream_hands_out_whole_proven_books(base_url: str, transport: Transport) -> None:
    stream = GatewayStream(base_url, ["orderbook:BTC_USD:0.01"], transport=transport, books="diff")
    books: list[StreamEvent] = []
    async with stream:
        async for event in stream:
            assert event.event in ("orderbook", "status")  # diffs are applied, never handed out
            if event.event == "orderbook":
                books.append(event)
            if len(books) == 3:
                break
    assert [b.data["seq"] for b in books] == list(range(books[0].data["seq"], books[0].data["seq"] + 3))
    assert stream.mismatches == 0 and len(books[-1].data["data"]["bids"]) == 15
    async with GatewayClient(base_url) as gateway:
        now = await gateway.orderbook("BTC_USD", "0.01")
    if now["seq"] == books[-1].data["seq"]:
        assert now["data"] == books[-1].data["data"]


async def test_a_diff_it_cannot_prove_is_counted_never_handed_out_and_asked_for_again() -> None:
    stream = GatewayStream("http://127.0.0.1:9", ["orderbook:X_USD:0.01"], books="diff")
    book = {"step": "0.01", "bids": [["1.00", "2"]], "asks": [["1.10", "3"]]}
    head = {"channel": "orderbook:X_USD:0.01", "symbol": "X/USD", "exchange_ts": 1, "received_ts": 2}
    whole = StreamEvent("e-1", "orderbook", {**head, "seq": 1, "stale": False, "data": book})
    assert await stream._book(whole) is whole
    change = {"bids": [["1.00", "0"], ["1.01", "5"]], "asks": []}
    good = {**head, "seq": 2, "prev_seq": 1, "data": change, "checksum": 1018715730}
    proven = await stream._book(StreamEvent("e-2", "orderbook_diff", good))
    assert proven is not None and proven.event == "orderbook" and proven.data["data"]["bids"] == [["1.01", "5"]]
    # A wrong checksum, then a diff that does not follow the book held.
    for bad in ({**good, "seq": 3, "prev_seq": 2, "checksum": 1}, {**good, "seq": 5, "prev_seq": 4}):
        assert await stream._book(StreamEvent("e-3", "orderbook_diff", bad)) is None
    assert stream.mismatches == 1  # the second came before the channel, asked for again, came whole
    assert "orderbook:X_USD:0.01" not in stream.held and stream._asked == {"orderbook:X_USD:0.01"}
    assert stream._reconnect  # SSE asks again on a new connection, with resync, until the whole book comes
    assert await stream._book(whole) is whole and stream._asked == set()
