"""The seam between ingest and clients: state store, event log and fan-out.

:class:`Hub` is the ingest side's way in (apply updates, emit statuses) and
the streams' :class:`~app.ports.Feed` (open, resume, extend, end). It keeps
the fan-out, and takes its :class:`~app.streams.eventlog.EventLog` as a part: the
in-process :class:`app.streams.eventlog.LocalLog`, or a cluster replica's log in Redis
(:class:`app.cluster.replica.RedisLog`), which holds a leader's changes until they are
written. The hub is the log's :class:`~app.streams.eventlog.Outlet`: the log hands it the
events it holds, and only those reach streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

from app.domain.channels import BOOK_KINDS, Channel
from app.domain.values import Json, Update
from app.ports import Ending, Opening, Sink, Stream
from app.state.events import Event, dumps, restamped
from app.state.store import ChannelState, Store
from app.streams.admission import Streams, reset_payload
from app.streams.eventlog import Change, Cursor, EventLog
from app.streams.fanout import Fanout, Subscription


class Hub:
    """Store (kept by the event log), event log and fan-out, as ingest and
    the streams see them."""

    def __init__(self, log: EventLog, streams: Streams, *, send_timeout_s: float) -> None:
        self.log = log
        self.fanout = Fanout(log, streams, send_timeout_s=send_timeout_s)
        self.fanout.head = log.store.seq  # the newest event handed out: none after this
        self._first_data: dict[str, asyncio.Event] = {}
        # Set at the next hand-out, for whoever waits to reach an id.
        self._progress: asyncio.Event | None = None
        log.bind(self)

    @property
    def store(self) -> Store:
        return self.log.store

    # --- ingest: change the store, record the change -------------------------

    def repeated(self, channel: Channel, payload: bytes, received_ts: int) -> bool:
        """A trade push that is the same bytes as the last accepted one: nothing
        new, and the channel is still fresh (it is counted so)."""
        log = self.log
        if not log.writable():
            return True
        if not log.store.same_window(channel, payload, received_ts):
            return False
        log.record(Change("repeat", channel, received_ts), [])
        return True

    def reject(self, channel: Channel, reason: str) -> bool:
        """Count a rejected payload; True the first time the reason is seen there."""
        log = self.log
        if not log.writable():
            return False
        first = log.store.reject(channel, reason)
        log.record(Change("reject", channel, 0, reason=reason), [])
        return first

    def apply(self, channel: Channel, update: Update, received_ts: int) -> None:
        """Apply one decoded update; its events reach streams once the log holds them."""
        log = self.log
        if log.writable():
            events = log.store.apply(channel, update, received_ts)
            log.record(Change("apply", channel, received_ts, update=update), events)

    def emit_status(self, channel: Channel, status: Mapping[str, Json], now_ms: int) -> None:
        log = self.log
        if log.writable():
            event = log.store.status_event(channel, status, now_ms)
            log.record(Change("status", channel, now_ms, status=status), [event])

    def forget(self, channel: Channel) -> None:
        log = self.log
        if log.writable():
            log.store.drop(channel)
            log.record(Change("forget", channel, 0), [])

    def tell(self, channel: str, status: Mapping[str, Json]) -> None:
        """A status of this process's own (its cluster's Redis cannot be
        reached, and back), to its streams only: an event outside the log,
        with no id and no new position."""
        self.fanout.publish(
            Event(
                self.fanout.head,
                channel,
                "status",
                dumps(status),
                event_id=None,
                conflatable=False,
                received_ts=0,
            )
        )

    # --- the Outlet: what the event log hands out -----------------------------

    def hand_out(self, events: Iterable[Event]) -> None:
        fanout = self.fanout
        for event in events:
            if event.seq > fanout.head:
                fanout.publish(event)
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def arrived(self, name: str) -> None:
        if name not in self._first_data:
            return
        state = self.log.store.channels.get(name)
        if state is not None and state.has_data:  # a status alone is not data
            self._first_data.pop(name).set()

    def restart(self, head: int) -> int:
        fanout = self.fanout
        told = len(fanout.everyone)
        fanout.close_all(Ending.OVERFLOW)
        fanout.head = head
        return told

    def streamed_channels(self) -> list[str]:
        """The channels some stream of this process follows."""
        return list(self.fanout.by_channel)

    # --- reads -------------------------------------------------------------

    def state(self, channel: Channel) -> ChannelState | None:
        return self.log.store.get(channel)

    def open_channel(self, channel: Channel) -> ChannelState:
        """The state of a channel, made empty if it has none yet."""
        return self.log.store.state(channel)

    def stale(self, state: ChannelState, now_ms: int) -> bool:
        return self.log.store.stale(state, now_ms)

    def reading(self, state: ChannelState, stale: bool) -> StoreReading:
        """A channel's answers, as REST reads them (the StateView's Reading)."""
        return StoreReading(self.log.store, state, stale)

    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool:
        """Wait until ``channel`` has data; False if ``timeout_s`` passed first."""
        state = self.log.store.get(channel)
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
        return self.log.store.epoch

    def position(self) -> str:
        """The id of the newest event handed out: a stream that has its
        backlog stands here."""
        return f"{self.epoch}-{self.fanout.head}"

    def open(
        self,
        client: str,
        channels: Iterable[Channel],
        last_event_id: str | None,
        capacity: int,
        *,
        diffs: bool = False,
        resync: frozenset[str] = frozenset(),
    ) -> Opening:
        subscription = self.fanout.subscribe(client, capacity)
        backlog, reset = self._extend(
            subscription, channels, last_event_id, restamp=False, diffs=diffs, resync=resync
        )
        return Opening(subscription, backlog, reset, self.position())

    def attach(self, stream: Stream, sink: Sink, opening: bytes) -> None:
        self.fanout.attach(_subscription(stream), sink, opening)

    def extend(
        self,
        stream: Stream,
        channels: Iterable[Channel],
        last_event_id: str | None,
        *,
        diffs: bool = False,
    ) -> tuple[list[Event], bool]:
        subscription = _subscription(stream)
        # A paused stream is first given what it missed, so that its position
        # can stand for its new channels too.
        if not self.fanout.catch_up(subscription):
            return [], False
        return self._extend(
            subscription, channels, last_event_id, restamp=last_event_id is None, diffs=diffs
        )

    def _extend(
        self,
        subscription: Subscription,
        channels: Iterable[Channel],
        last_event_id: str | None,
        *,
        restamp: bool,
        diffs: bool,
        resync: frozenset[str] = frozenset(),
    ) -> tuple[list[Event], bool]:
        """Add channels to a subscription; returns what to send first for them
        (the missed events after ``last_event_id``, else their current
        snapshots) and whether the id could not be resumed. With ``restamp``
        the snapshots carry the current sequence number as their id, so that
        ids on a stream that already runs never go back. With ``diffs`` the
        new order book and depth channels are followed as diffs, those of
        ``resync`` from no book held (their whole event first, even resuming)."""
        fanout = self.fanout
        channels = list(channels)
        # Subscribed again in the other mode: switched (the next update whole).
        again = frozenset(
            c.name for c in channels if c.name in subscription.channels and c.kind in BOOK_KINDS
        )
        fanout.switch_books(subscription, again, diffs)
        channel_list = [c for c in channels if c.name not in subscription.channels]
        names = frozenset(channel.name for channel in channel_list)
        books = (
            frozenset(c.name for c in channel_list if c.kind in BOOK_KINDS)
            if diffs
            else frozenset()
        )
        fanout.follow_books(subscription, books, resync)
        cursor = Cursor.parse(last_event_id) if last_event_id else None
        backlog: list[Event] | None = None
        head = fanout.head
        if cursor is not None and cursor.epoch == self.epoch and cursor.seq <= head:
            backlog = self.log.since(cursor.seq, names, books - resync)
            if backlog is not None:
                owed = resync - {event.channel for event in backlog if event.book is not None}
                if owed:  # whole first, though nothing came since the id: at the head's id
                    backlog += [restamped(e, self.epoch, head) for e in self.log.latest(owed)]
                backlog = fanout.view(subscription, backlog, replay=True)
        reset = last_event_id is not None and backlog is None
        if backlog is None:
            backlog = self.log.latest(names)
            if restamp:
                backlog = [restamped(event, self.epoch, head) for event in backlog]
            backlog = fanout.view(subscription, backlog, replay=False)
        fanout.retarget(subscription, subscription.channels | names)
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
        """A cursor of this epoch past what this process has handed out: an id
        of another replica that is ahead (its log is read here meanwhile). In
        the single process every id comes from here: never."""
        if not self.log.shared or not last_event_id:
            return False
        cursor = Cursor.parse(last_event_id)
        return cursor is not None and cursor.epoch == self.epoch and cursor.seq > self.fanout.head

    async def reach(self, last_event_id: str | None, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until this process has handed out the
        event ``last_event_id``, so that a stream resumes from it here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.behind(last_event_id):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if self._progress is None:
                self._progress = asyncio.Event()
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await progress.wait()

    def reset_event(self, channels: Iterable[str]) -> Event:
        data = reset_payload(self.epoch, channels)
        return Event(0, "", "reset", data, event_id=None, conflatable=False, received_ts=0)

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


class StoreReading:
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
