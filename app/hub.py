"""The seam between ingest and clients: state store, replay buffer and fan-out.

Everything that reads or writes channel state or events goes through the
:class:`Hub` interface. :class:`LocalHub` keeps it all in this process. A
shared backend (Redis Streams for events and replay, one elected replica holding
the upstream links) implements the same interface when the gateway runs as
several replicas; nothing outside this module reaches into the parts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from app.channels import Channel
from app.domain import Json, Update
from app.fanout import Cursor, Fanout, ReplayBuffer, Subscription
from app.store import ChannelState, Event, Store, restamped


@dataclass(frozen=True, slots=True)
class Opening:
    """What a new stream starts with: the events to send first, and whether
    the client must be told to reset (its id could not be resumed)."""

    subscription: Subscription
    backlog: list[Event]
    reset: bool
    position: str  # the id of the newest event when the stream opened: the client's cursor


class Hub(Protocol):
    """State, replay and fan-out, as seen by ingest and by the HTTP side."""

    epoch: str

    def repeated(self, channel: Channel, payload: bytes, received_ts: int) -> bool: ...
    def reject(self, channel: Channel, reason: str) -> bool: ...
    def apply(self, channel: Channel, update: Update, received_ts: int) -> None: ...
    def emit_status(self, channel: Channel, status: Mapping[str, Json], now_ms: int) -> None: ...
    def forget(self, channel: Channel) -> None: ...
    def state(self, channel: Channel) -> ChannelState | None: ...
    def open_channel(self, channel: Channel) -> ChannelState: ...
    def stale(self, state: ChannelState, now_ms: int) -> bool: ...
    def snapshot(self, state: ChannelState, stale: bool) -> bytes: ...
    def trade_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes: ...
    def candle_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes: ...
    def order_answer(
        self, state: ChannelState, stale: bool, order_state: str | None, symbol: str | None
    ) -> bytes: ...
    def fill_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes: ...
    def etag(self, state: ChannelState, stale: bool) -> str: ...
    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool: ...
    def open_stream(
        self, channels: Iterable[Channel], last_event_id: str | None, buffer: int
    ) -> Opening: ...
    def extend_stream(
        self,
        subscription: Subscription,
        channels: Iterable[Channel],
        last_event_id: str | None,
        *,
        restamp: bool = False,
    ) -> tuple[list[Event], bool]: ...
    def shrink_stream(self, subscription: Subscription, channels: Iterable[Channel]) -> None: ...
    def close_stream(self, subscription: Subscription) -> None: ...
    def position(self) -> str: ...
    def subscribers(self, channel: Channel) -> int: ...
    def close_all_streams(self) -> None: ...
    def tick_streams(self, now: float, heartbeat_s: float, send_timeout_s: float) -> int: ...


class LocalHub:
    """The in-process hub: one Store, one ReplayBuffer, one Fanout."""

    def __init__(self, store: Store, replay: ReplayBuffer) -> None:
        self.store = store
        self.replay = replay
        self.fanout = Fanout()
        self.epoch = store.epoch
        self._first_data: dict[str, asyncio.Event] = {}

    # --- ingest ------------------------------------------------------------

    def repeated(self, channel: Channel, payload: bytes, received_ts: int) -> bool:
        """A trade push that is the same bytes as the last accepted one: nothing
        new, and the channel is still fresh (it is counted so)."""
        return self.store.same_window(channel, payload, received_ts)

    def reject(self, channel: Channel, reason: str) -> bool:
        """Count a rejected payload; True the first time the reason is seen there."""
        return self.store.reject(channel, reason)

    def apply(self, channel: Channel, update: Update, received_ts: int) -> None:
        """Apply one decoded update and deliver the events it makes."""
        for event in self.store.apply(channel, update, received_ts):
            self._deliver(event)
        waiter = self._first_data.pop(channel.name, None)
        if waiter is not None:
            waiter.set()

    def emit_status(self, channel: Channel, status: Mapping[str, Json], now_ms: int) -> None:
        self._deliver(self.store.status_event(channel, status, now_ms))

    def _deliver(self, event: Event) -> None:
        self.replay.append(event)
        self.fanout.publish(event)

    def forget(self, channel: Channel) -> None:
        self.store.drop(channel)

    # --- reads -------------------------------------------------------------

    def state(self, channel: Channel) -> ChannelState | None:
        return self.store.get(channel)

    def open_channel(self, channel: Channel) -> ChannelState:
        """The state of a channel, made empty if it has none yet."""
        return self.store.state(channel)

    def stale(self, state: ChannelState, now_ms: int) -> bool:
        return self.store.stale(state, now_ms)

    def snapshot(self, state: ChannelState, stale: bool) -> bytes:
        return self.store.snapshot(state, stale)

    def trade_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes:
        return self.store.trade_answer(state, stale, limit)

    def candle_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes:
        return self.store.candle_answer(state, stale, limit)

    def order_answer(
        self, state: ChannelState, stale: bool, order_state: str | None, symbol: str | None
    ) -> bytes:
        return self.store.order_answer(state, stale, order_state, symbol)

    def fill_answer(self, state: ChannelState, stale: bool, limit: int) -> bytes:
        return self.store.fill_answer(state, stale, limit)

    def etag(self, state: ChannelState, stale: bool) -> str:
        return self.store.etag(state, stale)

    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool:
        """Wait until ``channel`` has data; False if ``timeout_s`` passed first."""
        state = self.store.get(channel)
        if state is not None and state.has_data:
            return True
        waiter = self._first_data.setdefault(channel.name, asyncio.Event())
        try:
            async with asyncio.timeout(timeout_s):
                await waiter.wait()
        except TimeoutError:
            return False
        return True

    # --- streams -----------------------------------------------------------

    def open_stream(
        self, channels: Iterable[Channel], last_event_id: str | None, buffer: int
    ) -> Opening:
        """Register a stream and say what it starts with. Synchronous, so that
        no event can fall between the backlog and the live subscription."""
        subscription = Subscription((), buffer)
        backlog, reset = self.extend_stream(subscription, channels, last_event_id)
        return Opening(subscription, backlog, reset, self.position())

    def position(self) -> str:
        """The id of the newest event: a stream that has its backlog stands here."""
        return f"{self.epoch}-{self.store.seq}"

    def extend_stream(
        self,
        subscription: Subscription,
        channels: Iterable[Channel],
        last_event_id: str | None,
        *,
        restamp: bool = False,
    ) -> tuple[list[Event], bool]:
        """Add channels to a stream; returns what to send first for them (the
        missed events after ``last_event_id``, else their current snapshots)
        and whether the id could not be resumed. With ``restamp`` the
        snapshots carry the current sequence number as their id, so that ids
        on a stream that already runs never go back."""
        channel_list = [c for c in channels if c.name not in subscription.channels]
        names = frozenset(channel.name for channel in channel_list)
        cursor = Cursor.parse(last_event_id) if last_event_id else None
        backlog: list[Event] | None = None
        if cursor is not None and cursor.epoch == self.epoch and cursor.seq <= self.store.seq:
            backlog = self.replay.since(cursor.seq, names)
        reset = last_event_id is not None and backlog is None
        if backlog is None:
            backlog = self._current_snapshots(channel_list)
            if restamp:
                backlog = [restamped(event, self.epoch, self.store.seq) for event in backlog]
        self.fanout.retarget(subscription, subscription.channels | names)
        return backlog, reset

    def shrink_stream(self, subscription: Subscription, channels: Iterable[Channel]) -> None:
        """Stop a stream's channels; what was pending for them is dropped."""
        names = frozenset(channel.name for channel in channels)
        self.fanout.retarget(subscription, subscription.channels - names)
        for key, event in list(subscription.pending.items()):
            if event.channel in names:
                del subscription.pending[key]

    def _current_snapshots(self, channels: list[Channel]) -> list[Event]:
        events = []
        for channel in channels:
            state = self.store.get(channel)
            if state is not None and state.last_event is not None:
                events.append(state.last_event)
        events.sort(key=lambda event: event.seq)
        return events

    def close_stream(self, subscription: Subscription) -> None:
        self.fanout.remove(subscription)

    def subscribers(self, channel: Channel) -> int:
        return self.fanout.subscribers(channel.name)

    def close_all_streams(self) -> None:
        self.fanout.close_all()

    def tick_streams(self, now: float, heartbeat_s: float, send_timeout_s: float) -> int:
        return self.fanout.tick(now, heartbeat_s, send_timeout_s)
