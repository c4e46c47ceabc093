"""The seam between ingest and clients: state store, event log and fan-out.

:class:`LocalHub` keeps them all in this process. It is the ingest side's
:class:`Hub` (apply updates, emit statuses) and the streams'
:class:`~app.ports.Feed` (open, resume, extend, end). A replica of a
cluster uses the same parts, kept by the cluster's log in Redis
(:class:`app.cluster.ClusterHub`, a subclass); nothing outside these two
modules reaches into the parts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Protocol

from app.admission import Streams, reset_payload
from app.channels import Channel
from app.domain import Json, Update
from app.fanout import Cursor, Fanout, ReplayBuffer, Subscription
from app.ports import Ending, Feed, Opening, Sink, Stream
from app.store import ChannelState, Event, Store, restamped


class Hub(Feed, Protocol):
    """State, event log and fan-out, as ingest and the gateway see them."""

    def repeated(self, channel: Channel, payload: bytes, received_ts: int) -> bool: ...
    def reject(self, channel: Channel, reason: str) -> bool: ...
    def apply(self, channel: Channel, update: Update, received_ts: int) -> None: ...
    def emit_status(self, channel: Channel, status: Mapping[str, Json], now_ms: int) -> None: ...
    def forget(self, channel: Channel) -> None: ...
    def state(self, channel: Channel) -> ChannelState | None: ...
    def open_channel(self, channel: Channel) -> ChannelState: ...
    def stale(self, state: ChannelState, now_ms: int) -> bool: ...
    def reading(self, state: ChannelState, stale: bool) -> LocalReading: ...
    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool: ...
    def subscribers(self, channel: Channel) -> int: ...
    def close_all_streams(self) -> None: ...
    def tick_streams(self, now: float, heartbeat_s: float) -> None: ...


class LocalHub:
    """The in-process hub: one Store, one ReplayBuffer, one Fanout."""

    def __init__(
        self, store: Store, replay: ReplayBuffer, streams: Streams, *, send_timeout_s: float
    ) -> None:
        self.store = store
        self.replay = replay
        self.fanout = Fanout(replay, self._latest, streams, send_timeout_s=send_timeout_s)
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
        self._arrived(channel.name)

    def _arrived(self, name: str) -> None:
        """A channel has data: whoever waits for its first wakes up."""
        waiter = self._first_data.pop(name, None)
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

    def reading(self, state: ChannelState, stale: bool) -> LocalReading:
        """A channel's answers, as REST reads them (the StateView's Reading)."""
        return LocalReading(self.store, state, stale)

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

    # --- streams (the Feed port) -------------------------------------------

    @property
    def epoch(self) -> str:
        return self.store.epoch

    def position(self) -> str:
        """The id of the newest event: a stream that has its backlog stands here."""
        return f"{self.store.epoch}-{self._head()}"

    def _head(self) -> int:
        """The sequence number of the newest event handed to streams."""
        return self.store.seq

    def open(
        self, client: str, channels: Iterable[Channel], last_event_id: str | None, capacity: int
    ) -> Opening:
        subscription = self.fanout.subscribe(client, capacity)
        backlog, reset = self._extend(subscription, channels, last_event_id, restamp=False)
        return Opening(subscription, backlog, reset, self.position())

    def attach(self, stream: Stream, sink: Sink, opening: bytes) -> None:
        self.fanout.attach(_subscription(stream), sink, opening)

    def extend(
        self, stream: Stream, channels: Iterable[Channel], last_event_id: str | None
    ) -> tuple[list[Event], bool]:
        subscription = _subscription(stream)
        # A paused stream is first given what it missed, so that its position
        # can stand for its new channels too.
        if not self.fanout.catch_up(subscription):
            return [], False
        return self._extend(subscription, channels, last_event_id, restamp=last_event_id is None)

    def _extend(
        self,
        subscription: Subscription,
        channels: Iterable[Channel],
        last_event_id: str | None,
        *,
        restamp: bool,
    ) -> tuple[list[Event], bool]:
        """Add channels to a subscription; returns what to send first for them
        (the missed events after ``last_event_id``, else their current
        snapshots) and whether the id could not be resumed. With ``restamp``
        the snapshots carry the current sequence number as their id, so that
        ids on a stream that already runs never go back."""
        channel_list = [c for c in channels if c.name not in subscription.channels]
        names = frozenset(channel.name for channel in channel_list)
        cursor = Cursor.parse(last_event_id) if last_event_id else None
        backlog: list[Event] | None = None
        head = self._head()
        if cursor is not None and cursor.epoch == self.epoch and cursor.seq <= head:
            backlog = self.replay.since(cursor.seq, names)
        reset = last_event_id is not None and backlog is None
        if backlog is None:
            backlog = self._latest(names)
            if restamp:
                backlog = [restamped(event, self.epoch, head) for event in backlog]
        self.fanout.retarget(subscription, subscription.channels | names)
        return backlog, reset

    def shrink(self, stream: Stream, channels: Iterable[Channel]) -> None:
        """Stop a stream's channels."""
        subscription = _subscription(stream)
        names = frozenset(channel.name for channel in channels)
        self.fanout.retarget(subscription, subscription.channels - names)

    def channels(self, stream: Stream) -> frozenset[str]:
        return _subscription(stream).channels

    def write(self, stream: Stream, data: bytes) -> None:
        self.fanout.write(_subscription(stream), data)

    def end(self, stream: Stream, ending: Ending) -> None:
        self.fanout.end(_subscription(stream), ending)

    def behind(self, last_event_id: str | None) -> bool:
        return False  # the single process is where every id comes from

    async def reach(self, last_event_id: str | None, timeout_s: float) -> None:
        return None

    def reset_event(self, channels: Iterable[str]) -> Event:
        data = reset_payload(self.epoch, channels)
        return Event(0, "", "reset", data, event_id=None, conflatable=False, received_ts=0)

    def _latest(self, names: Iterable[str]) -> list[Event]:
        """The current snapshot events of channels, oldest first."""
        events = []
        for name in names:
            state = self.store.channels.get(name)
            if state is not None and state.last_event is not None:
                events.append(state.last_event)
        events.sort(key=lambda event: event.seq)
        return events

    def subscribers(self, channel: Channel) -> int:
        return self.fanout.subscribers(channel.name)

    def close_all_streams(self) -> None:
        self.fanout.close_all()

    def tick_streams(self, now: float, heartbeat_s: float) -> None:
        self.fanout.tick(now, heartbeat_s)


def _subscription(stream: Stream) -> Subscription:
    """The fan-out's own handle behind a stream (only this hub makes them)."""
    assert isinstance(stream, Subscription)
    return stream


class LocalReading:
    """A channel's state in this process's store, read at one moment."""

    __slots__ = ("stale", "state", "store")

    def __init__(self, store: Store, state: ChannelState, stale: bool) -> None:
        self.store = store
        self.state = state
        self.stale = stale

    @property
    def etag(self) -> str:
        return self.store.etag(self.state, self.stale)

    def snapshot(self) -> bytes:
        return self.store.snapshot(self.state, self.stale)

    def trades(self, limit: int) -> bytes:
        return self.store.trade_answer(self.state, self.stale, limit)

    def candles(self, limit: int) -> bytes:
        return self.store.candle_answer(self.state, self.stale, limit)

    def orders(self, state: str | None, symbol: str | None) -> bytes:
        return self.store.order_answer(self.state, self.stale, state, symbol)

    def fills(self, limit: int) -> bytes:
        return self.store.fill_answer(self.state, self.stale, limit)
