"""The latest state of every channel, and the events its updates make. Pure.

Theory of operation: :meth:`Store.apply` takes a decoded update of one channel
with the time it was received and returns the events it makes: one for a
snapshot channel (its new state), one per new distinct trade for the trade
log. Every event gets the next number of one gap-free sequence for the whole
process; together with the process's ``epoch`` it is the event's id on every
stream. Each event is encoded once, here, into the bytes every client gets.

Answers are kept encoded too. A snapshot's envelope is stored as two byte
strings around its ``stale`` flag, so that serving it costs a concatenation;
the caller says whether the channel is stale at read time. Nothing here reads a
clock or does I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from app.domain.channels import BOOK_KINDS, PUSH_INTERVAL_S, Channel, Kind
from app.domain.tradelog import TradeLog
from app.domain.values import (
    Balance,
    Balances,
    Candle,
    Fill,
    Json,
    OrderChange,
    Snapshot,
    TradeWindow,
    Update,
)
from app.state.events import Book, Event, dumps

# List answers (trades, candles, orders, fills) kept per channel: the limits
# and filters asked of its current state most.
ANSWERS_KEPT = 16


@dataclass(slots=True)
class ChannelState:
    """What the store knows of one channel."""

    channel: Channel
    seq: int = 0
    exchange_ts: int | None = None
    received_ts: int | None = None
    messages: int = 0
    rejected: int = 0
    last_rejection: str | None = None
    rejection_reasons: set[str] = field(default_factory=set)
    # Encoded envelope around the stale flag: head + b"true"/b"false" + tail.
    head: bytes = b""
    tail: bytes = b""
    # The last snapshot event, for streams that connect later.
    last_event: Event | None = None
    trades: TradeLog | None = None
    trade_items: deque[tuple[int, bytes]] = field(default_factory=deque)
    candles: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    balances: dict[str, Balance] = field(default_factory=dict)
    # Orders: the newest state of each, encoded; closed ones in closing order.
    orders: dict[str, tuple[OrderChange, bytes]] = field(default_factory=dict)
    closed_orders: deque[str] = field(default_factory=deque)
    # Fills: unique by deal number; `deals_seen` outlives the kept fills so that
    # a late duplicate of an old deal is still recognised.
    fills: OrderedDict[str, tuple[int, bytes]] = field(default_factory=OrderedDict)
    deals_seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Pushes that changed nothing: duplicates, and states older than the one held.
    superseded: int = 0
    # Trade pushes that shared nothing with a full previous window.
    gaps: int = 0
    # The last accepted trade push, as received (a repeat of it is nothing new).
    last_payload: bytes = b""
    # List answers already made (trades, candles, orders, fills) of the state's
    # current version (seq and the envelope's stamps: a push that changed
    # nothing moves received_ts), by stale and what was asked.
    answers: dict[tuple[object, ...], bytes] = field(
        default_factory=dict, compare=False, repr=False
    )
    answers_version: tuple[object, ...] = field(default=(), compare=False, repr=False)

    @property
    def has_data(self) -> bool:
        return self.received_ts is not None

    def is_stale(self, now_ms: int, stale_factor: float) -> bool:
        interval = PUSH_INTERVAL_S.get(self.channel.kind)
        if interval is None or self.received_ts is None:
            return False
        return now_ms - self.received_ts > stale_factor * interval * 1000


class Store:
    """Per-channel state, and the one global event sequence of this process."""

    def __init__(
        self,
        epoch: str,
        *,
        trade_capacity: int = 1000,
        candle_capacity: int = 1000,
        closed_order_capacity: int = 1000,
        fill_capacity: int = 1000,
        stale_factor: float = 5.0,
    ) -> None:
        self.epoch = epoch
        self.seq = 0
        self.trade_capacity = trade_capacity
        self.candle_capacity = candle_capacity
        self.closed_order_capacity = closed_order_capacity
        self.fill_capacity = fill_capacity
        self.stale_factor = stale_factor
        self.channels: dict[str, ChannelState] = {}
        # The last status event of each channel (a cluster's followers answer from it).
        self.statuses: dict[str, Mapping[str, Json]] = {}

    # --- writing ---------------------------------------------------------

    def state(self, channel: Channel) -> ChannelState:
        state = self.channels.get(channel.name)
        if state is None:
            state = self.channels[channel.name] = ChannelState(channel)
            if channel.kind is Kind.TRADES:
                state.trades = TradeLog()
        return state

    def drop(self, channel: Channel) -> None:
        """Forget a channel released upstream: its state would only grow stale."""
        self.channels.pop(channel.name, None)
        self.statuses.pop(channel.name, None)

    def same_window(self, channel: Channel, payload: bytes, received_ts: int) -> bool:
        """True (and the channel counted fresh) when a trade push is the same
        bytes as the last accepted one: it holds no new trade."""
        state = self.state(channel)
        if state.last_payload != payload or not state.has_data:
            return False
        self.repeat(channel, received_ts)
        return True

    def repeat(self, channel: Channel, received_ts: int) -> None:
        """Count a push that repeated the last one: nothing new, still fresh."""
        state = self.state(channel)
        state.messages += 1
        self._touch(state, None, received_ts)

    def reject(self, channel: Channel, reason: str) -> bool:
        """Count a rejected payload; True the first time this reason is seen on
        this channel (the caller logs it once)."""
        state = self.state(channel)
        state.rejected += 1
        state.last_rejection = reason
        if reason in state.rejection_reasons or len(state.rejection_reasons) >= 32:
            return False
        state.rejection_reasons.add(reason)
        return True

    def apply(self, channel: Channel, update: Update, received_ts: int) -> list[Event]:
        """Apply one accepted update and return the events it makes."""
        state = self.state(channel)
        state.messages += 1
        if isinstance(update, TradeWindow):
            return self._apply_trades(state, update, received_ts)
        if isinstance(update, OrderChange):
            return self._apply_order(state, update, received_ts)
        if isinstance(update, Fill):
            return self._apply_fill(state, update, received_ts)
        if isinstance(update, Balances):
            return [self._apply_snapshot(state, self._merge_balances(state, update), received_ts)]
        if self._older_book(state, update):
            state.superseded += 1
            return []
        return [self._apply_snapshot(state, update, received_ts)]

    @staticmethod
    def _older_book(state: ChannelState, update: Snapshot) -> bool:
        """An order book stamped before the one held does not replace it."""
        return (
            state.channel.kind is Kind.ORDERBOOK
            and update.exchange_ts is not None
            and state.exchange_ts is not None
            and update.exchange_ts < state.exchange_ts
        )

    def _next_event(
        self, channel: str, name: str, data: bytes, *, conflatable: bool, received_ts: int
    ) -> Event:
        self.seq += 1
        return Event(
            self.seq,
            channel,
            name,
            data,
            event_id=f"{self.epoch}-{self.seq}",
            conflatable=conflatable,
            received_ts=received_ts,
        )

    def _envelope(self, state: ChannelState) -> bytes:
        head = {
            "channel": state.channel.name,
            "symbol": state.channel.display_symbol,
            "seq": state.seq,
            "exchange_ts": state.exchange_ts,
            "received_ts": state.received_ts,
        }
        return dumps(head)[:-1] + b',"stale":'

    def _apply_snapshot(self, state: ChannelState, update: Snapshot, received_ts: int) -> Event:
        data = dumps(update.wire())  # once, for the answer, the event and the history
        if isinstance(update, Candle):
            self._keep_candle(state, update.open_ts, data)
        state.seq += 1
        state.exchange_ts = update.exchange_ts
        state.received_ts = received_ts
        state.head = self._envelope(state)
        state.tail = b',"data":' + data + b"}"
        event = self._next_event(
            state.channel.name,
            state.channel.event_name,
            state.head + b"false" + state.tail,
            conflatable=True,
            received_ts=received_ts,
        )
        if state.channel.kind in BOOK_KINDS:
            held = state.last_event
            event.book = Book(event, state.seq, held.data if held is not None else None)
        state.last_event = event
        return event

    def _keep_candle(self, state: ChannelState, open_ts: int, data: bytes) -> None:
        state.candles[open_ts] = data
        state.candles.move_to_end(open_ts)
        while len(state.candles) > self.candle_capacity:
            state.candles.popitem(last=False)

    def _apply_trades(
        self, state: ChannelState, update: TradeWindow, received_ts: int
    ) -> list[Event]:
        assert state.trades is not None
        dropped = state.trades.out_of_order
        fresh = state.trades.apply(update.trades)
        # Trades older than the newest logged change nothing: superseded.
        state.superseded += state.trades.out_of_order - dropped
        state.last_payload = update.raw
        events = []
        if state.trades.gap:
            state.gaps += 1
            status: dict[str, Json] = {
                "channel": state.channel.name,
                "status": "live",
                "reason": "gap",
                "detail": "this push shares no trade with the previous full window: "
                "trades may be missing between them",
                "ts": received_ts,
            }
            # Not conflatable: a later status must not hide that trades may be missing.
            events.append(
                self._next_event(
                    state.channel.name,
                    "status",
                    dumps(status),
                    conflatable=False,
                    received_ts=received_ts,
                )
            )
        for trade in fresh:
            item = dumps(trade)  # its fields are its wire() keys, in order
            events.append(self._item_event(state, item, trade.ts, received_ts))
            state.trade_items.append((state.seq, item))
        while len(state.trade_items) > self.trade_capacity:
            state.trade_items.popleft()
        self._touch(state, fresh[-1].ts if fresh else None, received_ts)
        return events

    def _merge_balances(self, state: ChannelState, update: Balances) -> Balances:
        """Balances by currency; a currency's newer entry wins, so that a push
        of some currencies, or a late one, never rolls another back."""
        for currency, balance in update.balances.items():
            held = state.balances.get(currency)
            if held is None or balance.updated_ts >= held.updated_ts:
                state.balances[currency] = balance
        return Balances(
            update.user_no, dict(state.balances), max(update.ts, state.exchange_ts or 0)
        )

    def _item_event(
        self, state: ChannelState, item: bytes, exchange_ts: int, received_ts: int
    ) -> Event:
        """The event of one new item of a log or map channel (trade, order, fill)."""
        state.seq += 1
        data = dumps(
            {
                "channel": state.channel.name,
                "symbol": state.channel.display_symbol,
                "seq": state.seq,
                "exchange_ts": exchange_ts,
                "received_ts": received_ts,
                "data": msgspec.Raw(item),
            }
        )
        return self._next_event(
            state.channel.name,
            state.channel.event_name,
            data,
            conflatable=False,
            received_ts=received_ts,
        )

    def _touch(self, state: ChannelState, exchange_ts: int | None, received_ts: int) -> None:
        if exchange_ts is not None:
            state.exchange_ts = max(exchange_ts, state.exchange_ts or 0)
        state.received_ts = received_ts
        state.head = self._envelope(state)

    def _apply_order(
        self, state: ChannelState, update: OrderChange, received_ts: int
    ) -> list[Event]:
        held = state.orders.get(update.order_no)
        if held is not None and not _newer(update, held[0]):
            state.superseded += 1
            self._touch(state, None, received_ts)
            return []
        item = dumps(update.wire())
        state.orders[update.order_no] = (update, item)
        if not update.is_open:
            if held is None or held[0].is_open:
                state.closed_orders.append(update.order_no)
            while len(state.closed_orders) > self.closed_order_capacity:
                state.orders.pop(state.closed_orders.popleft(), None)
        event = self._item_event(state, item, update.updated_ts, received_ts)
        self._touch(state, update.updated_ts, received_ts)
        return [event]

    def _apply_fill(self, state: ChannelState, update: Fill, received_ts: int) -> list[Event]:
        if update.deal_no in state.deals_seen:
            state.superseded += 1
            self._touch(state, None, received_ts)
            return []
        state.deals_seen[update.deal_no] = None
        while len(state.deals_seen) > 100 * self.fill_capacity:
            state.deals_seen.popitem(last=False)
        item = dumps(update.wire())
        state.fills[update.deal_no] = (update.ts, item)
        while len(state.fills) > self.fill_capacity:
            state.fills.popitem(last=False)
        event = self._item_event(state, item, update.ts, received_ts)
        self._touch(state, update.ts, received_ts)
        return [event]

    def status_event(self, channel: Channel, status: Mapping[str, Json], received_ts: int) -> Event:
        """An event telling a channel's streams that its status changed."""
        self.statuses[channel.name] = status
        return self._next_event(
            channel.name, "status", dumps(status), conflatable=True, received_ts=received_ts
        )

    # --- reading ---------------------------------------------------------

    def get(self, channel: Channel) -> ChannelState | None:
        return self.channels.get(channel.name)

    def stale(self, state: ChannelState, now_ms: int) -> bool:
        return state.is_stale(now_ms, self.stale_factor)

    def etag(self, state: ChannelState, stale: bool) -> str:
        return f'"{self.epoch}-{state.seq}-{int(stale)}"'

    def _answer(self, state: ChannelState, stale: bool, data: bytes) -> bytes:
        if not state.head:
            state.head = self._envelope(state)
        return state.head + (b"true" if stale else b"false") + b',"data":' + data + b"}"

    def snapshot(self, state: ChannelState, stale: bool) -> bytes:
        """The REST answer of a snapshot channel."""
        return state.head + (b"true" if stale else b"false") + state.tail

    def trade_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes:
        """Distinct trades, newest first, at most ``limit``."""
        return self._list_answer(state, stale, ("trades", limit), self._trade_items)

    def order_answer(
        self, state: ChannelState, stale: bool, order_state: str | None, symbol: str | None
    ) -> bytes:
        """Orders, most recently updated first, filtered by state and symbol."""
        return self._list_answer(state, stale, ("orders", order_state, symbol), self._order_items)

    def fill_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes:
        """Fills, newest first, at most ``limit``."""
        return self._list_answer(state, stale, ("fills", limit), self._fill_items)

    def candle_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes:
        """Candles seen since start, oldest first, the newest ``limit`` of them."""
        return self._list_answer(state, stale, ("candles", limit), self._candle_items)

    def _list_answer(
        self,
        state: ChannelState,
        stale: bool,
        asked: tuple[object, ...],
        items: Callable[..., list[bytes]],
    ) -> bytes:
        """A list answer, made once per state version and question (a few kept)."""
        # The key holds what the envelope (``state.head``) is made of.
        version = (state.seq, state.received_ts, state.exchange_ts)
        if state.answers_version != version:
            state.answers.clear()  # only the current version's are kept
            state.answers_version = version
        key = (stale, *asked)
        answer = state.answers.get(key)
        if answer is None:
            if len(state.answers) >= ANSWERS_KEPT:
                state.answers.clear()
            made = items(state, *asked[1:])
            answer = state.answers[key] = self._answer(state, stale, b"[" + b",".join(made) + b"]")
        return answer

    @staticmethod
    def _trade_items(state: ChannelState, limit: int) -> list[bytes]:
        return [state.trade_items[-i][1] for i in range(1, min(limit, len(state.trade_items)) + 1)]

    @staticmethod
    def _order_items(
        state: ChannelState, order_state: str | None, symbol: str | None
    ) -> list[bytes]:
        orders = sorted(state.orders.values(), key=lambda held: held[0].updated_ts, reverse=True)
        return [
            item
            for change, item in orders
            if (order_state is None or change.state == order_state)
            and (symbol is None or change.symbol == symbol)
        ]

    @staticmethod
    def _fill_items(state: ChannelState, limit: int) -> list[bytes]:
        fills = sorted(state.fills.items(), key=lambda kv: (kv[1][0], kv[0]), reverse=True)
        return [item for _, (_, item) in fills[:limit]]

    @staticmethod
    def _candle_items(state: ChannelState, limit: int) -> list[bytes]:
        return list(state.candles.values())[-limit:]


def _newer(change: OrderChange, held: OrderChange) -> bool:
    """Whether ``change`` supersedes ``held``: a later update time wins; at the
    same time a closed state wins over an open one (a cancel is final)."""
    if change.updated_ts != held.updated_ts:
        return change.updated_ts > held.updated_ts
    return held.is_open and not change.is_open
