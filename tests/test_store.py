from __future__ import annotations

import json

import pytest

from app.domain.channels import parse_channel
from app.domain.decode import Rejection, Snapshot, Trade, TradeWindow, decode
from app.state import events
from app.state.events import dumps
from app.state.store import Store
from tests.support import sample

BOOK = parse_channel("orderbook:BTC_USD:0.01")
TRADES = parse_channel("trades:BTC_USD")
KLINE = parse_channel("kline:BTC_USD:1m")
T0 = 1_700_000_000_000


def book() -> Snapshot:
    update = decode(BOOK, sample("orderBook_BTC_USD_0.01.json"))
    assert isinstance(update, Snapshot)
    return update


def test_snapshot_envelope_and_sequence() -> None:
    store = Store("ep")
    events = store.apply(BOOK, book(), T0)
    assert [e.seq for e in events] == [1]
    store.apply(BOOK, book(), T0 + 1000)
    state = store.get(BOOK)
    assert state is not None
    assert not store.stale(state, T0 + 1000)
    answer = json.loads(store.snapshot(state, False))
    assert answer["channel"] == "orderbook:BTC_USD:0.01"
    assert answer["seq"] == 2
    assert answer["exchange_ts"] == 1532686075803
    assert answer["received_ts"] == T0 + 1000
    assert answer["stale"] is False
    assert answer["data"]["bids"][0] == ["6674.56", "0.8490"]
    # Stale after 5 push intervals of 2 s.
    assert store.stale(state, T0 + 12_000)
    assert json.loads(store.snapshot(state, True))["stale"] is True
    assert store.etag(state, False) != store.etag(state, True)


def test_events_are_encoded_once_as_sse_frames() -> None:
    store = Store("ep")
    (event,) = store.apply(BOOK, book(), T0)
    assert event.frame.startswith(b"id: ep-1\nevent: orderbook\ndata: {")
    assert event.frame.endswith(b"}\n\n")
    assert b"\n" not in event.data
    assert json.loads(event.data)["seq"] == 1


def test_one_event_per_new_trade_with_the_channel_seq() -> None:
    store = Store("ep")
    a = Trade("1.0", "0.1", "buy", T0)
    b = Trade("1.1", "0.2", "sell", T0 + 1)
    assert len(store.apply(TRADES, TradeWindow((a,)), T0)) == 1
    events = store.apply(TRADES, TradeWindow((a, b, b)), T0 + 10)
    assert [json.loads(e.data)["seq"] for e in events] == [2, 3]
    assert [json.loads(e.data)["data"] for e in events] == [b.wire(), b.wire()]
    # Byte for byte too: the store encodes the trade itself, its keys in wire()'s order.
    assert all(e.data.endswith(b',"data":' + dumps(b.wire()) + b"}") for e in events)
    assert store.apply(TRADES, TradeWindow((a, b, b)), T0 + 20) == []
    state = store.get(TRADES)
    assert state is not None
    answer = json.loads(store.trade_answer(state, False, 2))
    assert answer["data"] == [b.wire(), b.wire()]
    assert answer["seq"] == 3
    assert answer["received_ts"] == T0 + 20


def test_candles_keep_a_history() -> None:
    store = Store("ep", candle_capacity=2)
    for minute in range(3):
        candle = {"symbol": "BTC/USD", "first": "1", "max": "2", "min": "0.5", "last": "1.5",
                  "quantity": str(minute), "timestamp": T0 + 60_000 * minute}
        update = decode(KLINE, json.dumps(candle).encode())
        assert isinstance(update, Snapshot)
        store.apply(KLINE, update, T0)
    state = store.get(KLINE)
    assert state is not None
    history = json.loads(store.candle_answer(state, False, 10))["data"]
    assert [c["volume"] for c in history] == ["1", "2"]


def test_rejections_are_counted_and_reported_once_per_reason() -> None:
    store = Store("ep")
    assert store.reject(BOOK, "payload is not JSON") is True
    assert store.reject(BOOK, "payload is not JSON") is False
    assert store.reject(BOOK, "payload is not UTF-8") is True
    state = store.get(BOOK)
    assert state is not None and state.rejected == 3 and not state.has_data


def test_the_store_keeps_the_newest_trades_up_to_its_capacity_and_counts_stale_ones() -> None:


    store = Store("e", trade_capacity=50)
    trades = [Trade(f"{6000 + i}.00", "0.1", "buy", 1_700_000_000_000 + i) for i in range(120)]
    for end in range(10, 121, 10):
        store.apply(TRADES, TradeWindow(tuple(trades[max(0, end - 50) : end])), 1_700_000_001_000)
    state = store.get(TRADES)
    assert state is not None and len(state.trade_items) == 50
    answer = json.loads(store.trade_answer(state, False, 1000))
    assert [t["price"] for t in answer["data"]] == [f"{6000 + i}.00" for i in reversed(range(70, 120))]
    # A push whose "new" trade is older than the newest logged changes nothing.
    store.apply(TRADES, TradeWindow((Trade("1.00", "0.1", "sell", 1_600_000_000_000),)), 1_700_000_002_000)
    assert state.superseded == 1 and len(state.trade_items) == 50


def test_an_events_wire_forms_are_made_once_and_only_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    sse_frame, ws_message = events.sse_frame, events.ws_message
    monkeypatch.setattr(events, "sse_frame", lambda *args: made.append("sse") or sse_frame(*args))
    monkeypatch.setattr(events, "ws_message", lambda *args: made.append("ws") or ws_message(*args))
    store = Store("ep")
    update = decode(BOOK, sample("orderBook_BTC_USD_0.01.json"))
    assert not isinstance(update, Rejection)
    [event] = store.apply(BOOK, update, T0)
    assert made == []  # no client yet
    frame = event.frame
    assert frame.startswith(b"id: ep-1\nevent: orderbook\ndata: {") and event.frame is frame
    assert made == ["sse"]  # once, and no WebSocket client asked
    def form(e: events.Event) -> bytes:
        made.append("form")
        return e.frame + b"!"

    assert event.wire(form) == frame + b"!" and event.wire(form) is event.wire(form)
    assert made == ["sse", "form"]  # a form's bytes are made once for all its clients
    assert json.loads(event.message) == {"id": "ep-1", "event": "orderbook", "data": json.loads(event.data)}
    assert event.message is event.message and made == ["sse", "form", "ws"]
