"""The event log: the hub's port for it, and the in-process implementation.

The hub (:mod:`app.streams.hub`) changes the store that its :class:`EventLog` keeps,
and records each :class:`Change` there; the log hands the change's events to
the hub's :class:`Outlet` once it holds them: at once in the single process
(:class:`LocalLog`, which keeps them in a :class:`RecentEvents`), after the
write to Redis on a cluster's leader (:class:`app.cluster.replica.RedisLog`). Streams
are given only what the log has handed out. Pure.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec

from app.domain.channels import Channel
from app.domain.values import Json, Update
from app.state.events import Event
from app.state.store import Store


class Change(msgspec.Struct, frozen=True):
    """One change the hub made to its store, as the event log records it:
    ``op`` is ``apply`` (with ``update``), ``repeat`` (a trade push that was
    the same bytes as the last: the channel is fresh), ``reject`` (with
    ``reason``), ``status`` (with ``status``) or ``forget``."""

    op: str
    channel: Channel
    ts: int
    update: Update | None = None
    status: Mapping[str, Json] | None = None
    reason: str | None = None


class Outlet(Protocol):
    """The hub, as its event log hands events to it."""

    def hand_out(self, events: Iterable[Event]) -> None:
        """Give events the log holds to the streams (those not given yet)."""
        ...

    def arrived(self, name: str) -> None:
        """The channel has data: whoever waits for its first wakes up."""
        ...

    def restart(self, head: int) -> int:
        """The log's data is of a new epoch: every stream is told to resume,
        and the streams' position is ``head``. Returns how many were told."""
        ...


class EventLog(Protocol):
    """The hub's event log: it keeps the store, records each change the hub
    makes to it, and hands the change's events to the hub's :class:`Outlet`
    once it holds them (at once in the process; after the write in a cluster)."""

    shared: bool  # ids come from other processes too: a cursor may be ahead

    @property
    def store(self) -> Store: ...
    def bind(self, outlet: Outlet) -> None: ...
    def writable(self) -> bool:
        """Whether the store may be changed here now (False: a change is dropped)."""
        ...

    def record(self, change: Change, events: list[Event]) -> None: ...
    def since(
        self, seq: int, channels: frozenset[str], books: frozenset[str] = frozenset()
    ) -> list[Event] | None:
        """Events handed out after ``seq`` on ``channels`` (snapshots
        conflated, but for the books of ``books``: every one, for their
        diffs); None when the log no longer holds all of them."""
        ...

    def latest(self, channels: Iterable[str]) -> list[Event]:
        """The newest snapshot handed out of each channel, oldest first."""
        ...


@dataclass(frozen=True, slots=True)
class Cursor:
    """A parsed event id: the epoch and the sequence number."""

    epoch: str
    seq: int

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        epoch, sep, seq = text.strip().rpartition("-")
        if not sep or not epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
            return None
        return cls(epoch, int(seq))


class RecentEvents:
    """The in-process event log: the newest events, bounded by count and by age."""

    def __init__(self, capacity: int, max_age_ms: int) -> None:
        self.events: deque[Event] = deque()
        self.capacity = capacity
        self.max_age_ms = max_age_ms
        # Sequence number of the newest event that has left the buffer.
        self.evicted_upto = 0

    def append(self, event: Event) -> None:
        self.events.append(event)
        horizon = event.received_ts - self.max_age_ms
        while self.events and (
            len(self.events) > self.capacity or self.events[0].received_ts < horizon
        ):
            self.evicted_upto = self.events.popleft().seq

    def since(
        self, seq: int, channels: frozenset[str], books: frozenset[str] = frozenset()
    ) -> list[Event] | None:
        """Events after ``seq`` on ``channels``, snapshots conflated but for
        the book events of ``books`` (each is a diff); None when the buffer
        no longer holds everything after ``seq``."""
        if seq < self.evicted_upto:
            return None
        missed: OrderedDict[tuple[str, str] | int, Event] = OrderedDict()
        # A later snapshot of a channel replaces an earlier one and takes its
        # place at the end, so that the ids stay in increasing order.
        start = len(self.events)
        while start > 0 and self.events[start - 1].seq > seq:
            start -= 1
        for index in range(start, len(self.events)):
            event = self.events[index]
            if event.channel not in channels:
                continue
            if event.conflatable and not (event.book is not None and event.channel in books):
                missed.pop(event.key, None)
                missed[event.key] = event
            else:
                missed[event.seq] = event
        return list(missed.values())


class LocalLog:
    """The event log of a process that is the whole gateway: each change's
    events are handed out as it is made, and kept in a :class:`RecentEvents`."""

    shared = False

    def __init__(self, store: Store, replay: RecentEvents) -> None:
        self._store = store
        self.replay = replay
        self._outlet: Outlet | None = None

    @property
    def store(self) -> Store:
        return self._store

    def bind(self, outlet: Outlet) -> None:
        self._outlet = outlet

    def writable(self) -> bool:
        return True

    def record(self, change: Change, events: list[Event]) -> None:
        outlet = self._outlet
        assert outlet is not None, "the log is bound to its hub first"
        for event in events:
            self.replay.append(event)
        outlet.hand_out(events)
        if change.op == "apply":
            outlet.arrived(change.channel.name)  # a trade window can bring data with no event

    def since(
        self, seq: int, channels: frozenset[str], books: frozenset[str] = frozenset()
    ) -> list[Event] | None:
        return self.replay.since(seq, channels, books)

    def latest(self, channels: Iterable[str]) -> list[Event]:
        """The current snapshot events of channels, oldest first."""
        held = self._store.channels
        events = []
        for name in channels:
            state = held.get(name)
            if state is not None and state.last_event is not None:
                events.append(state.last_event)
        events.sort(key=lambda event: event.seq)
        return events
