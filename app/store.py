"""The latest state of every channel, and the events its updates make. Pure.

Theory of operation: :meth:`Store.apply` takes a decoded update of one channel
with the time it was received and returns the events it makes: one for a
snapshot channel (its new state), one per new distinct trade for the trade
log. Every event gets the next number of one gap-free sequence for the whole
process; together with the process's ``epoch`` it is the event's id on every
stream. Each event is encoded once, here, into the bytes every client gets.

Answers are kept encoded too. A snapshot's envelope is stored as two byte
strings around its ``stale`` flag, so that serving it costs a concatenation;
staleness is computed at read time from the clock the caller passes in. Nothing
here reads a clock or does I/O.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from app.channels import PUSH_INTERVAL_S, Channel, Kind
from app.decode import Snapshot, TradeWindow, Update
from app.tradelog import TradeLog


def dumps(value: Any) -> bytes:
    """Compact JSON, the one encoding of every answer and event."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a stream, encoded once for every client that receives it."""

    seq: int
    channel: str  # channel name; status events use the name of their channel
    name: str  # SSE event name
    data: bytes  # one line of JSON
    frame: bytes  # the whole SSE frame: id, event and data lines
    conflatable: bool  # a later event of the same channel and name supersedes it
    received_ts: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.name)


def sse_frame(event_id: str, name: str, data: bytes) -> bytes:
    return b"id: " + event_id.encode() + b"\nevent: " + name.encode() + b"\ndata: " + data + b"\n\n"


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
        stale_factor: float = 5.0,
    ) -> None:
        self.epoch = epoch
        self.seq = 0
        self.trade_capacity = trade_capacity
        self.candle_capacity = candle_capacity
        self.stale_factor = stale_factor
        self.channels: dict[str, ChannelState] = {}

    # --- writing ---------------------------------------------------------

    def state(self, channel: Channel) -> ChannelState:
        state = self.channels.get(channel.name)
        if state is None:
            state = self.channels[channel.name] = ChannelState(channel)
            if channel.kind is Kind.TRADES:
                state.trades = TradeLog(self.trade_capacity)
        return state

    def drop(self, channel: Channel) -> None:
        """Forget a channel released upstream: its state would only grow stale."""
        self.channels.pop(channel.name, None)

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
        return [self._apply_snapshot(state, update, received_ts)]

    def _next_event(
        self, channel: str, name: str, data: bytes, *, conflatable: bool, received_ts: int
    ) -> Event:
        self.seq += 1
        event_id = f"{self.epoch}-{self.seq}"
        return Event(
            self.seq, channel, name, data, sse_frame(event_id, name, data), conflatable, received_ts
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
        if state.channel.kind is Kind.KLINE:
            self._keep_candle(state, update)
        state.seq += 1
        state.exchange_ts = update.exchange_ts
        state.received_ts = received_ts
        state.head = self._envelope(state)
        state.tail = b',"data":' + dumps(update.data) + b"}"
        event = self._next_event(
            state.channel.name,
            state.channel.event_name,
            state.head + b"false" + state.tail,
            conflatable=True,
            received_ts=received_ts,
        )
        state.last_event = event
        return event

    def _keep_candle(self, state: ChannelState, update: Snapshot) -> None:
        open_ts = int(update.data["open_ts"])
        state.candles[open_ts] = dumps(update.data)
        state.candles.move_to_end(open_ts)
        while len(state.candles) > self.candle_capacity:
            state.candles.popitem(last=False)

    def _apply_trades(
        self, state: ChannelState, update: TradeWindow, received_ts: int
    ) -> list[Event]:
        assert state.trades is not None
        fresh = state.trades.apply(update.trades)
        if not fresh:
            state.received_ts = received_ts
            state.head = self._envelope(state)
            return []
        events = []
        base = {"channel": state.channel.name, "symbol": state.channel.display_symbol}
        for trade in fresh:
            state.seq += 1
            item = dumps(trade.to_data())
            state.trade_items.append((state.seq, item))
            envelope = dumps(
                base | {"seq": state.seq, "exchange_ts": trade.ts, "received_ts": received_ts}
            )
            events.append(
                self._next_event(
                    state.channel.name,
                    state.channel.event_name,
                    envelope[:-1] + b',"data":' + item + b"}",
                    conflatable=False,
                    received_ts=received_ts,
                )
            )
        while len(state.trade_items) > self.trade_capacity:
            state.trade_items.popleft()
        state.exchange_ts = fresh[-1].ts
        state.received_ts = received_ts
        state.head = self._envelope(state)
        return events

    def status_event(self, channel: Channel, status: dict[str, Any], received_ts: int) -> Event:
        """An event telling a channel's streams that its status changed."""
        return self._next_event(
            channel.name, "status", dumps(status), conflatable=True, received_ts=received_ts
        )

    # --- reading ---------------------------------------------------------

    def get(self, channel: Channel) -> ChannelState | None:
        return self.channels.get(channel.name)

    def stale(self, state: ChannelState, now_ms: int) -> bool:
        return state.is_stale(now_ms, self.stale_factor)

    def etag(self, state: ChannelState, now_ms: int) -> str:
        return f'"{self.epoch}-{state.seq}-{int(self.stale(state, now_ms))}"'

    def _answer(self, state: ChannelState, now_ms: int, data: bytes) -> bytes:
        flag = b"true" if self.stale(state, now_ms) else b"false"
        return state.head + flag + b',"data":' + data + b"}"

    def snapshot(self, state: ChannelState, now_ms: int) -> bytes:
        """The REST answer of a snapshot channel."""
        flag = b"true" if self.stale(state, now_ms) else b"false"
        return state.head + flag + state.tail

    def trade_answer(self, state: ChannelState, now_ms: int, limit: int) -> bytes:
        """Distinct trades, newest first, at most ``limit``."""
        items = [state.trade_items[-i][1] for i in range(1, min(limit, len(state.trade_items)) + 1)]
        return self._answer(state, now_ms, b"[" + b",".join(items) + b"]")

    def candle_answer(self, state: ChannelState, now_ms: int, limit: int) -> bytes:
        """Candles seen since start, oldest first, the newest ``limit`` of them."""
        items = list(state.candles.values())[-limit:]
        return self._answer(state, now_ms, b"[" + b",".join(items) + b"]")
