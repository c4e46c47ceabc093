"""The cluster's event log entries and store checkpoints, encoded. Pure.

Theory of operation: in a cluster the leader's store is a state machine and
the log is its input. Every change the leader makes to its store (an update
applied, a repeated trade push, a rejection, a status, a channel forgotten) is
one *entry*, and the entry carries the events that change made, numbered by the
leader's store. A follower applies each entry to its own store with the same
code (:meth:`app.state.store.Store.apply` and friends), so its state (for REST, and
for taking over: the trade windows, order states and seen deal numbers) is the
leader's, and it hands the entry's events, bytes and ids as the leader made
them, to its own clients. The ids are therefore the cluster's: any replica
resumes any client.

A *checkpoint* is the whole store at one entry, written by the leader every
few seconds, so that a replica that starts late (or lost track) starts from it
and applies only the entries after it.

The encoding is JSON: prices and quantities are the exchange's strings, so they
stay exact; raw bytes are base64.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from app.domain.channels import parse_channel
from app.domain.tradelog import TradeLog
from app.domain.values import (
    Balance,
    Balances,
    Candle,
    DepthChart,
    Fill,
    Json,
    OrderBook,
    OrderChange,
    Trade,
    TradeWindow,
    Update,
)
from app.state.events import Book, Event
from app.state.store import ChannelState, Store
from app.streams.eventlog import Change

_FLAT: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (OrderBook, DepthChart, Candle, OrderChange, Fill)
}


def _fields(value: Any) -> dict[str, Any]:
    return msgspec.structs.asdict(value)


def encode_update(update: Update) -> dict[str, Any]:
    """An update as JSON-ready values, tagged with its type."""
    if isinstance(update, Balances):
        balances = {currency: _fields(b) for currency, b in update.balances.items()}
        return {"t": "Balances", "user_no": update.user_no, "balances": balances, "ts": update.ts}
    if isinstance(update, TradeWindow):
        trades = [[t.price, t.quantity, t.side, t.ts] for t in update.trades]
        return {"t": "TradeWindow", "trades": trades, "raw": _b64(update.raw)}
    return {"t": type(update).__name__, **_fields(update)}


def decode_update(value: Mapping[str, Any]) -> Update:
    fields = dict(value)
    kind = fields.pop("t")
    if kind == "Balances":
        balances = {c: Balance(**b) for c, b in fields["balances"].items()}
        return Balances(fields["user_no"], balances, fields["ts"])
    if kind == "TradeWindow":
        trades = tuple(Trade(p, q, s, ts) for p, q, s, ts in fields["trades"])
        return TradeWindow(trades, _unb64(fields["raw"]))
    cls = _FLAT.get(kind)
    if cls is None:
        raise ValueError(f"an entry holds an update of unknown type {kind!r}")
    # Converted, not called: JSON's arrays become the levels' (price, quantity) tuples.
    update: Update = msgspec.convert(fields, cls)
    return update


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


# --- entries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One change of the leader's store, and the events it made.

    ``op`` is one of ``apply`` (``update``), ``repeat`` (a trade push that was
    the same bytes as the last: the channel is fresh), ``reject`` (``reason``),
    ``status`` (``status``) and ``forget``. ``seq`` is the store's sequence
    number after the change: the events are numbered up to it."""

    op: str
    channel: str
    ts: int
    seq: int
    events: tuple[tuple[str, bool, bytes], ...] = ()  # name, conflatable, data
    update: Update | None = None
    reason: str | None = None
    status: Mapping[str, Json] | None = None

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            "op": self.op,
            "ch": self.channel,
            "ts": self.ts,
            "seq": self.seq,
            "ev": [
                [name, int(conflatable), data.decode()] for name, conflatable, data in self.events
            ],
        }
        if self.update is not None:
            value["u"] = encode_update(self.update)
        if self.reason is not None:
            value["r"] = self.reason
        if self.status is not None:
            value["s"] = self.status
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        value = json.loads(data)
        update = value.get("u")
        return cls(
            value["op"],
            value["ch"],
            value["ts"],
            value["seq"],
            tuple((name, bool(c), text.encode()) for name, c, text in value["ev"]),
            decode_update(update) if update is not None else None,
            value.get("r"),
            value.get("s"),
        )

    def made(self, epoch: str, applied: list[Event] | None = None) -> list[Event]:
        """The entry's events, numbered and named as the leader made them; a
        book event carries the book ``applied`` (the events the change made
        on this replica's store) holds, under the leader's id."""
        first = self.seq - len(self.events) + 1
        events = [
            Event(
                first + index,
                self.channel,
                name,
                data,
                event_id=f"{epoch}-{first + index}",
                conflatable=conflatable,
                received_ts=self.ts,
            )
            for index, (name, conflatable, data) in enumerate(self.events)
        ]
        for event, here in zip(events, applied or (), strict=False):
            if here.book is not None and here.name == event.name:
                event.book = Book(event, here.book.seq, here.book.previous)
        return events


def entry(change: Change, store: Store, events: list[Event]) -> Entry:
    """The entry of a change just made to ``store``, which made ``events``."""
    made = tuple((e.name, e.conflatable, e.data) for e in events)
    return Entry(
        change.op,
        change.channel.name,
        change.ts,
        store.seq,
        made,
        update=change.update,
        reason=change.reason,
        status=change.status,
    )


def apply_entry(store: Store, item: Entry) -> list[Event]:
    """Make on ``store`` the change the leader made: the same code, the same
    result; the events it made here (numbered by this store: see :meth:`Entry.made`)."""
    channel = parse_channel(item.channel)
    made: list[Event] = []
    if item.op == "apply":
        assert item.update is not None
        made = store.apply(channel, item.update, item.ts)
    elif item.op == "repeat":
        store.repeat(channel, item.ts)
    elif item.op == "reject":
        store.reject(channel, item.reason or "")
    elif item.op == "status":
        store.status_event(channel, item.status or {}, item.ts)
    elif item.op == "forget":
        store.drop(channel)
    else:
        raise ValueError(f"an entry holds an unknown change {item.op!r}")
    store.seq = item.seq
    return made


# --- checkpoints --------------------------------------------------------------


def _event(event: Event | None) -> list[Any] | None:
    if event is None:
        return None
    return [
        event.seq,
        event.name,
        event.data.decode(),
        event.id,
        event.conflatable,
        event.received_ts,
    ]


def _unevent(channel: str, value: list[Any] | None) -> Event | None:
    if value is None:
        return None
    seq, name, data, event_id, conflatable, received_ts = value
    return Event(
        seq,
        channel,
        name,
        data.encode(),
        event_id=event_id,
        conflatable=conflatable,
        received_ts=received_ts,
    )


def _state(state: ChannelState) -> dict[str, Any]:
    trades = state.trades
    return {
        "channel": state.channel.name,
        "seq": state.seq,
        "exchange_ts": state.exchange_ts,
        "received_ts": state.received_ts,
        "messages": state.messages,
        "rejected": state.rejected,
        "last_rejection": state.last_rejection,
        "rejection_reasons": sorted(state.rejection_reasons),
        "head": state.head.decode(),
        "tail": state.tail.decode(),
        "last_event": _event(state.last_event),
        "trades": None
        if trades is None
        else {
            "window": [[t.price, t.quantity, t.side, t.ts] for t in trades.window],
            "out_of_order": trades.out_of_order,
            "gap": trades.gap,
        },
        "trade_items": [[seq, item.decode()] for seq, item in state.trade_items],
        "candles": [[ts, item.decode()] for ts, item in state.candles.items()],
        "balances": {c: _fields(b) for c, b in state.balances.items()},
        "orders": [
            [order_no, _fields(change), item.decode()]
            for order_no, (change, item) in state.orders.items()
        ],
        "closed_orders": list(state.closed_orders),
        "fills": [[deal, ts, item.decode()] for deal, (ts, item) in state.fills.items()],
        "deals_seen": list(state.deals_seen),
        "superseded": state.superseded,
        "gaps": state.gaps,
        "last_payload": _b64(state.last_payload),
    }


def _unstate(value: Mapping[str, Any]) -> ChannelState:
    name = value["channel"]
    state = ChannelState(parse_channel(name))
    state.seq = value["seq"]
    state.exchange_ts = value["exchange_ts"]
    state.received_ts = value["received_ts"]
    state.messages = value["messages"]
    state.rejected = value["rejected"]
    state.last_rejection = value["last_rejection"]
    state.rejection_reasons = set(value["rejection_reasons"])
    state.head = value["head"].encode()
    state.tail = value["tail"].encode()
    state.last_event = _unevent(name, value["last_event"])
    trades = value["trades"]
    if trades is not None:
        log = TradeLog()
        log.window = tuple(Trade(p, q, s, ts) for p, q, s, ts in trades["window"])
        log.out_of_order = trades["out_of_order"]
        log.gap = trades["gap"]
        state.trades = log
    state.trade_items = deque((seq, item.encode()) for seq, item in value["trade_items"])
    state.candles = OrderedDict((ts, item.encode()) for ts, item in value["candles"])
    state.balances = {c: Balance(**b) for c, b in value["balances"].items()}
    state.orders = {
        order_no: (OrderChange(**change), item.encode())
        for order_no, change, item in value["orders"]
    }
    state.closed_orders = deque(value["closed_orders"])
    state.fills = OrderedDict((deal, (ts, item.encode())) for deal, ts, item in value["fills"])
    state.deals_seen = OrderedDict((deal, None) for deal in value["deals_seen"])
    state.superseded = value["superseded"]
    state.gaps = value["gaps"]
    state.last_payload = _unb64(value["last_payload"])
    return state


def checkpoint(store: Store) -> bytes:
    """The whole store as it stands now (its log position is known once the
    entry that brought it here is written: it is kept beside)."""
    value = {
        "epoch": store.epoch,
        "seq": store.seq,
        "channels": [_state(state) for state in store.channels.values()],
        "statuses": store.statuses,
    }
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    epoch: str
    seq: int
    position: str  # the log entry the store stands after
    channels: tuple[ChannelState, ...]
    statuses: Mapping[str, Mapping[str, Json]]


def read_checkpoint(data: bytes, position: str) -> Checkpoint:
    value = json.loads(data)
    channels = tuple(_unstate(state) for state in value["channels"])
    return Checkpoint(value["epoch"], value["seq"], position, channels, value["statuses"])


def restore(store: Store, point: Checkpoint) -> None:
    """Make ``store`` (empty, with its capacities) the checkpoint's store."""
    store.epoch = point.epoch
    store.seq = point.seq
    store.channels = {state.channel.name: state for state in point.channels}
    store.statuses = dict(point.statuses)
