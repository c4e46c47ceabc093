"""Upstream payloads that are well-formed but implausible are rejected with a
reason, and no single message can leave a channel unable to take genuine data."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from app.domain.channels import Channel
from app.domain.decode import Rejection, Snapshot, TradeWindow, decode
from app.state.store import Store
from tests.support import sample

BOOK = Channel.orderbook("BTC_USD", "0.01")
DEPTH = Channel.depth("BTC_USD")
TRADES = Channel.trades("BTC_USD")
NOW = 1_700_000_000_000


def book() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    raw["timestamp"] = NOW
    return raw


def depth() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(sample("depth_BTC_USD.json"))
    return raw


def trade(ts: int, price: str = "6674.56") -> dict[str, Any]:
    return {"symbol": "BTC/USD", "price": price, "quantity": "0.1", "action": "BUY", "timestamp": ts}


def rejected(channel: Channel, doc: Any, received_ts: int | None = NOW) -> str:
    result = decode(channel, json.dumps(doc).encode(), received_ts)
    assert isinstance(result, Rejection), result
    return result.reason


def test_the_samples_are_plausible() -> None:
    assert isinstance(decode(BOOK, json.dumps(book()).encode(), NOW), Snapshot)
    assert isinstance(decode(DEPTH, sample("depth_BTC_USD.json"), NOW), Snapshot)


def test_a_crossed_book_is_rejected() -> None:
    doc = book()
    doc["bids"][0]["limitPrice"] = doc["asks"][0]["limitPrice"]
    assert "crossed" in rejected(BOOK, doc)


def test_two_levels_at_one_price_are_rejected() -> None:
    doc = book()
    doc["asks"][1]["limitPrice"] = doc["asks"][0]["limitPrice"]
    assert "two levels at one price" in rejected(BOOK, doc)


def test_a_zero_quantity_level_is_rejected() -> None:
    doc = book()
    doc["bids"][3]["quantity"] = "0.0000"
    assert "zero quantity" in rejected(BOOK, doc)


def test_a_price_off_the_step_grid_is_rejected() -> None:
    doc = book()
    doc["asks"][-1]["limitPrice"] = doc["asks"][-1]["limitPrice"] + "3"  # 0.001 off the 0.01 grid
    assert "off the book's step" in rejected(BOOK, doc)
    coarse = Channel.orderbook("BTC_USD", "1.0")
    doc = book()
    doc["step"] = "1.0"
    for side in ("bids", "asks"):
        for i, level in enumerate(doc[side]):
            level["limitPrice"] = str((6000 - i) if side == "bids" else (7000 + i)) + ".0"
    assert isinstance(decode(coarse, json.dumps(doc).encode(), NOW), Snapshot)
    doc["asks"][0]["limitPrice"] = "7000.5"
    assert "off the book's step" in rejected(coarse, doc)


@pytest.mark.parametrize("value", ["007.5", "00", "01"])
def test_decimals_with_leading_zeros_are_rejected(value: str) -> None:
    doc = book()
    doc["bids"][0]["quantity"] = value
    assert "decimal" in rejected(BOOK, doc)


def test_depth_quantities_must_be_cumulative() -> None:
    doc = depth()
    doc["asks"][2]["quantity"], doc["asks"][3]["quantity"] = (
        doc["asks"][3]["quantity"],
        doc["asks"][2]["quantity"],
    )
    assert "not cumulative" in rejected(DEPTH, doc)
    zero_first = depth()
    zero_first["bids"][0]["quantity"] = "0.0000"  # the exchange does send this
    assert isinstance(decode(DEPTH, json.dumps(zero_first).encode(), NOW), Snapshot)


def test_a_trade_window_over_50_is_rejected() -> None:
    window = [trade(NOW - i) for i in range(51)]
    assert "more than 50" in rejected(TRADES, window)
    assert isinstance(decode(TRADES, json.dumps(window[:50]).encode(), NOW), TradeWindow)


def test_duplicate_json_keys_are_rejected() -> None:
    text = json.dumps(book())[:-1] + ', "step": "0.01"}'
    result = decode(BOOK, text.encode(), NOW)
    assert isinstance(result, Rejection) and "duplicate key" in result.reason


def test_a_timestamp_far_ahead_of_the_receive_time_is_rejected() -> None:
    doc = book()
    doc["timestamp"] = NOW + 301_000
    assert "ahead of the receive time" in rejected(BOOK, doc)
    doc["timestamp"] = NOW + 299_000
    assert isinstance(decode(BOOK, json.dumps(doc).encode(), NOW), Snapshot)
    assert "ahead" in rejected(TRADES, [trade(9_999_999_999_999)])


def apply(store: Store, channel: Channel, doc: Any, received_ts: int) -> int:
    """Decode and apply one push as the hub does; the number of events it made."""
    result = decode(channel, json.dumps(doc).encode(), received_ts)
    if isinstance(result, Rejection):
        store.reject(channel, result.reason)
        return -1
    return len(store.apply(channel, result, received_ts))


def test_one_poisoned_trade_never_blocks_the_genuine_ones() -> None:
    store = Store("e")
    assert apply(store, TRADES, [trade(NOW - 1)], NOW) == 1
    # A trade stamped in the year 2286 is rejected, so the next genuine window
    # is taken, and exchange_ts never sticks at the poisoned value.
    assert apply(store, TRADES, [trade(9_999_999_999_999), trade(NOW - 1)], NOW) == -1
    assert apply(store, TRADES, [trade(NOW + 5, "6675.00"), trade(NOW - 1)], NOW + 10) == 1
    state = store.get(TRADES)
    assert state is not None and state.exchange_ts == NOW + 5 and state.rejected == 1


def test_an_older_book_does_not_replace_the_newer_one() -> None:
    store = Store("e")
    newer, older = book(), book()
    older["timestamp"] = NOW - 1000
    older["bids"][0]["quantity"] = "9.9999"
    assert apply(store, BOOK, newer, NOW) == 1
    assert apply(store, BOOK, older, NOW + 1) == 0
    state = store.get(BOOK)
    assert state is not None and state.superseded == 1 and state.exchange_ts == NOW
    assert b"9.9999" not in store.snapshot(state, False)


def window(start: int, count: int = 50) -> list[dict[str, Any]]:
    """A full window of distinct trades, newest first."""
    return [trade(start + i, f"{6000 + (start + i - NOW) % 1000}.00") for i in reversed(range(count))]


def test_a_window_sharing_nothing_with_a_full_one_is_a_gap() -> None:
    store = Store("e")
    decoded = decode(TRADES, json.dumps(window(NOW)).encode(), NOW + 100)
    assert isinstance(decoded, TradeWindow)
    assert len(store.apply(TRADES, decoded, NOW + 100)) == 50
    overlapping = window(NOW + 10)
    decoded = decode(TRADES, json.dumps(overlapping).encode(), NOW + 100)
    assert isinstance(decoded, TradeWindow)
    events = store.apply(TRADES, decoded, NOW + 100)
    assert [e.name for e in events] == ["trade"] * 10  # shares 40: no gap
    disjoint = decode(TRADES, json.dumps(window(NOW + 1000)).encode(), NOW + 2000)
    assert isinstance(disjoint, TradeWindow)
    events = store.apply(TRADES, disjoint, NOW + 2000)
    assert events[0].name == "status" and not events[0].conflatable
    status = json.loads(events[0].data)
    assert status["reason"] == "gap" and status["channel"] == "trades:BTC_USD"
    assert [e.name for e in events[1:]] == ["trade"] * 50
    state = store.get(TRADES)
    assert state is not None and state.gaps == 1


def test_a_window_after_a_short_one_is_no_gap() -> None:
    store = Store("e")
    for pushed in (window(NOW, 10), window(NOW + 1000, 50)):
        decoded = decode(TRADES, json.dumps(copy.deepcopy(pushed)).encode(), NOW + 5000)
        assert isinstance(decoded, TradeWindow)
        events = store.apply(TRADES, decoded, NOW + 5000)
        assert all(e.name == "trade" for e in events)
    state = store.get(TRADES)
    assert state is not None and state.gaps == 0
