"""Handing events to streams: the replay buffer and the per-client buffers.

Theory of operation: :meth:`Fanout.publish` runs on the ingest path and never
awaits. For each subscription that follows the event's channel it puts the
event's bytes in that subscription's bounded buffer and wakes its reader. A
snapshot event replaces a pending event of the same channel (conflation: a slow
reader gets the latest state, not every state); it moves to the end of the
buffer so that ids stay in increasing order. An append-only event (trade, fill,
order) that finds the buffer full closes the subscription instead: its client
resumes from its last id and gets the rest from the replay buffer.

The replay buffer keeps the newest events by count and age. A stream that
resumes from an id in this process's epoch that the buffer still covers gets
every missed event once, in order (for snapshot channels only the latest state);
otherwise it is told to reset.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from app.store import Event


@dataclass(frozen=True, slots=True)
class Cursor:
    """A parsed event id: the process epoch and the sequence number."""

    epoch: str
    seq: int

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        epoch, sep, seq = text.strip().rpartition("-")
        if not sep or not epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
            return None
        return cls(epoch, int(seq))


class ReplayBuffer:
    """The newest events of the process, bounded by count and by age."""

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

    def since(self, seq: int, channels: frozenset[str]) -> list[Event] | None:
        """Events after ``seq`` on ``channels``, snapshots conflated; None when
        the buffer no longer holds everything after ``seq``."""
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
            if event.conflatable:
                missed.pop(event.key, None)
                missed[event.key] = event
            else:
                missed[event.seq] = event
        return list(missed.values())


class Subscription:
    """One stream's place in the fan-out: the channels it follows and its
    bounded buffer of events not yet sent."""

    def __init__(self, channels: Iterable[str], capacity: int) -> None:
        self.channels = frozenset(channels)
        self.capacity = capacity
        self.pending: OrderedDict[tuple[str, str] | int, Event] = OrderedDict()
        self.wake = asyncio.Event()
        self.overflowed = False
        self.closed = False
        # Kept by the stream that sends, read by Fanout.tick: no timer per event.
        self.heartbeat_due = False
        self.last_sent = time.monotonic()
        self.sending_since: float | None = None
        self.sender: asyncio.Task[None] | None = None
        self.stalled = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if event.conflatable:
            self.pending.pop(event.key, None)
            self.pending[event.key] = event
        elif len(self.pending) >= self.capacity:
            self.overflowed = True
            self.pending.clear()
        else:
            self.pending[event.seq] = event
        self.wake.set()

    def take(self) -> list[Event]:
        """Everything pending, in order; empties the buffer."""
        events = list(self.pending.values())
        self.pending.clear()
        self.wake.clear()
        return events

    async def wait(self) -> None:
        """Wait until something is pending, the stream is closed, or a
        heartbeat is due (see :meth:`Fanout.tick`)."""
        if not (self.pending or self.overflowed or self.closed or self.heartbeat_due):
            self.wake.clear()
            await self.wake.wait()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class Fanout:
    """Subscriptions by channel, fed without awaiting anyone."""

    def __init__(self) -> None:
        self.by_channel: dict[str, set[Subscription]] = {}
        self.everyone: set[Subscription] = set()

    def retarget(self, subscription: Subscription, channels: frozenset[str]) -> None:
        """Make a subscription follow exactly ``channels`` (registering it if it is new)."""
        held = subscription.channels if subscription in self.everyone else frozenset()
        for name in held - channels:
            subscribers = self.by_channel.get(name)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self.by_channel[name]
        for name in channels - held:
            self.by_channel.setdefault(name, set()).add(subscription)
        subscription.channels = channels
        self.everyone.add(subscription)

    def remove(self, subscription: Subscription) -> None:
        self.retarget(subscription, frozenset())
        self.everyone.discard(subscription)

    def subscribers(self, channel: str) -> int:
        return len(self.by_channel.get(channel, ()))

    def publish(self, event: Event) -> None:
        for subscription in self.by_channel.get(event.channel, ()):
            subscription.offer(event)

    def close_all(self) -> None:
        for subscription in list(self.everyone):
            subscription.close()

    def tick(self, now: float, heartbeat_s: float, send_timeout_s: float) -> int:
        """Run about once a second: asks for a heartbeat on streams idle for
        ``heartbeat_s``, and cancels the sender of a stream whose send has been
        blocked for ``send_timeout_s`` (a client that stopped reading). Returns
        how many were cancelled."""
        cancelled = 0
        for subscription in list(self.everyone):
            since = subscription.sending_since
            if since is not None and now - since > send_timeout_s:
                if subscription.sender is not None and not subscription.sender.done():
                    subscription.stalled = True
                    subscription.sender.cancel()
                    cancelled += 1
            elif since is None and now - subscription.last_sent >= heartbeat_s:
                subscription.heartbeat_due = True
                subscription.wake.set()
        return cancelled
