"""The cluster's log entries and checkpoints: a follower that applies the
leader's entries holds the leader's store, byte for byte, and hands out the
leader's events; a checkpoint restores a store exactly."""

from __future__ import annotations

import json
from collections.abc import Iterable

import msgspec
import pytest

from app.cluster.entries import (
    Entry,
    apply_entry,
    checkpoint,
    decode_update,
    encode_update,
    entry,
    read_checkpoint,
    restore,
)
from app.domain.channels import Channel, Kind, parse_channel
from app.domain.decode import decode
from app.domain.values import OrderBook, OrderChange, Trade, TradeWindow, Update
from app.state.events import Event
from app.state.store import Store
from app.streams.admission import Streams
from app.streams.eventlog import Change, Outlet
from app.streams.hub import Hub
from tests.support import sample

T0 = 1_532_686_080_000
SAMPLES = {
    "orderbook:BTC_USD:0.01": "orderBook_BTC_USD_0.01.json",
    "depth:BTC_USD": "depth_BTC_USD.json",
    "kline:BTC_USD:1m": "kline_BTC_USD_60000.json",
    "trades:BTC_USD": "tickers_BTC_USD.json",
    "assets": "asset_change.json",
    "orders": "order_change.constructed.json",
    "fills": "trade_change.json",
}


def updates() -> list[tuple[Channel, Update]]:
    """One update of every kind, decoded from the real payloads."""
    decoded = []
    for name, file in SAMPLES.items():
        channel = parse_channel(name)
        update = decode(channel, sample(file), T0, 10**12)
        assert not hasattr(update, "reason"), (name, update)
        decoded.append((channel, update))
    return decoded  # type: ignore[return-value]


class Keeping:
    """An event log that keeps the entry of each change, as the cluster's
    writer appends it (the real hub makes the changes: :class:`Leader`)."""

    shared = False

    def __init__(self, store: Store) -> None:
        self._store = store
        self.entries: list[bytes] = []
        self.events: list[Event] = []

    @property
    def store(self) -> Store:
        return self._store

    def bind(self, outlet: Outlet) -> None:
        pass

    def writable(self) -> bool:
        return True

    def record(self, change: Change, events: list[Event]) -> None:
        self.entries.append(entry(change, self._store, events).encode())
        self.events.extend(events)

    def since(self, seq: int, channels: frozenset[str]) -> list[Event] | None:
        return None

    def latest(self, channels: Iterable[str]) -> list[Event]:
        return []


class Leader:
    """The hub of a leader, its store changed by the gateway's own ingest
    code, and the entries its changes make."""

    def __init__(self) -> None:
        self.log = Keeping(Store("ep", trade_capacity=60, fill_capacity=3, closed_order_capacity=2))
        self.hub = Hub(self.log, Streams(10, 10), send_timeout_s=10)
        self.store = self.log.store
        self.entries = self.log.entries
        self.events = self.log.events

    def apply(self, channel: Channel, update: Update, ts: int) -> None:
        self.hub.apply(channel, update, ts)

    def status(self, channel: Channel, status: str, ts: int) -> None:
        body = {"channel": channel.name, "status": status, "reason": None, "ts": ts}
        self.hub.emit_status(channel, body, ts)


def feed(leader: Leader, rounds: int) -> None:
    """Every kind of change, many times over: books, trade windows that
    overlap (with repeated identical trades), orders that open and close,
    fills with a duplicate deal, statuses, a rejection, a forgotten channel."""
    base = updates()
    trades = parse_channel("trades:BTC_USD")
    window: list[Trade] = []
    for n in range(rounds):
        ts = T0 + 1000 * n
        for channel, update in base:
            if isinstance(update, OrderChange):
                update = msgspec.structs.replace(
                    update,
                    order_no=f"{update.order_no}{n % 4}",
                    updated_ts=update.updated_ts + n,
                    state="new" if n % 3 else "cancel",
                )
            if not isinstance(update, TradeWindow):
                leader.apply(channel, update, ts)
        same = Trade("6700.01", "0.5", "buy", ts)
        window = [*window, same, same, Trade(f"6700.{n:02d}", "0.1", "sell", ts + 1)][-50:]
        leader.apply(trades, TradeWindow(tuple(window), b"raw %d" % n), ts)
        leader.status(trades, "live" if n % 2 else "stale", ts)
    assert leader.hub.reject(trades, "a reason")
    assert leader.hub.repeated(trades, b"raw %d" % (rounds - 1), T0 + 10**6)
    leader.hub.forget(parse_channel("depth:BTC_USD"))


def made(items: list[bytes], store: Store) -> list[Event]:
    events = []
    for data in items:
        item = Entry.decode(data)
        apply_entry(store, item)
        events.extend(item.made(store.epoch))
    return events


def same_events(a: list[Event], b: list[Event]) -> bool:
    def shape(e: Event) -> tuple[object, ...]:
        return (e.seq, e.id, e.channel, e.name, e.data, e.conflatable, e.received_ts)

    return [shape(e) for e in a] == [shape(e) for e in b]


def test_every_update_kind_survives_its_encoding_exactly() -> None:
    for _channel, update in updates():
        again = decode_update(json.loads(json.dumps(encode_update(update))))
        assert again == update
        assert type(again) is type(update)
        if isinstance(update, TradeWindow):
            assert isinstance(again, TradeWindow) and again.raw == update.raw


def test_a_follower_applying_the_entries_holds_the_leaders_store_byte_for_byte() -> None:
    leader = Leader()
    feed(leader, 30)
    follower = Store("ep", trade_capacity=60, fill_capacity=3, closed_order_capacity=2)
    events = made(leader.entries, follower)
    assert same_events(events, leader.events)
    assert follower.seq == leader.store.seq
    assert checkpoint(follower) == checkpoint(leader.store)
    # The answers REST gives are the same bytes too.
    for name in SAMPLES:
        channel = parse_channel(name)
        a, b = leader.store.get(channel), follower.get(channel)
        if a is None:
            assert b is None and channel.kind is Kind.DEPTH  # forgotten on both
            continue
        assert b is not None
        assert leader.store.snapshot(a, False) == follower.snapshot(b, False)
        assert leader.store.trade_answer(a, True, 100) == follower.trade_answer(b, True, 100)
        assert leader.store.order_answer(a, False, None, None) == follower.order_answer(
            b, False, None, None
        )
        assert leader.store.fill_answer(a, False, 10) == follower.fill_answer(b, False, 10)
        assert leader.store.candle_answer(a, False, 10) == follower.candle_answer(b, False, 10)


@pytest.mark.parametrize("cut", [1, 7, 40, 90])
def test_a_checkpoint_and_the_entries_after_it_make_the_same_store(cut: int) -> None:
    leader = Leader()
    feed(leader, 30)
    midway = Store("ep", trade_capacity=60, fill_capacity=3, closed_order_capacity=2)
    made(leader.entries[:cut], midway)
    saved = checkpoint(midway)
    late = Store("", trade_capacity=60, fill_capacity=3, closed_order_capacity=2)
    restore(late, read_checkpoint(saved, "5-0"))
    assert checkpoint(late) == saved
    rest = made(leader.entries[cut:], late)
    assert same_events(rest, leader.events[len(leader.events) - len(rest) :])
    assert checkpoint(late) == checkpoint(leader.store)
    # The restored trade window aligns the next push as the leader's does.
    trades = parse_channel("trades:BTC_USD")
    state, again = leader.store.get(trades), late.get(trades)
    assert state is not None and again is not None and state.trades and again.trades
    push = TradeWindow((*state.trades.window[-5:], Trade("1", "1", "buy", T0 + 10**7)))
    assert [e.data for e in leader.store.apply(trades, push, T0)] == [
        e.data for e in late.apply(trades, push, T0)
    ]


def test_an_unknown_change_or_update_type_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_update({"t": "Nothing"})
    book = next(update for _, update in updates() if isinstance(update, OrderBook))
    fields = encode_update(book)
    # msgspec's ValidationError, a ValueError from msgspec 0.20 on
    with pytest.raises((ValueError, msgspec.ValidationError)):  # a key the update does not have
        decode_update({**fields, "extra": 1})
    with pytest.raises((ValueError, msgspec.ValidationError)):  # a level that is no pair
        decode_update({**fields, "bids": [["1.00"]]})
    store = Store("ep")
    with pytest.raises(ValueError):
        apply_entry(store, Entry("explode", "trades:BTC_USD", 0, 0))
