"""Handing events to streams at publish time: each stream's subscription and
its policy (catching up from the event log, :mod:`app.streams.eventlog`), and the one interface of the sinks
(the SSE response and the WebSocket) that the bytes go to.

Theory of operation. :meth:`Fanout.publish` runs on the ingest path and never
awaits. For each subscription that follows the event's channel it writes the
event's bytes, in the wire form of the subscription's sink (made once per
event and form, see :meth:`app.state.events.Event.wire`), straight to the sink: no
task per client, no queue of bytes per client. A sink's write never blocks; it
hands the bytes to the connection's buffer.

A connection whose buffer passes its high-water mark (the client reads slower
than events come) makes its sink call :meth:`Subscription.pause`. A paused
subscription is skipped by publish; it keeps only its *position*, the sequence
number of the newest event published when it paused, and a count of the log
events (trades, fills, orders) it has missed. When the connection drains, the
sink calls :meth:`Subscription.resume`, and the subscription gets everything
after its position from the event log in one write: for snapshot channels
only the latest state (conflation: a slow reader gets the latest book, not
every book), for log channels every event once, in order. A subscription that
misses more than its capacity of log events, or whose position the log no
longer holds while it missed log events, is closed with word to resume with
its last id (overflow); one that stays paused past the send timeout is
dropped at once (stalled). :meth:`Fanout.tick` (about twice a second)
enforces the send timeout and asks idle sinks for a heartbeat, looking at a
share of the streams each time (:data:`HEARTBEAT_ROUNDS`), not at every
stream at every tick.

A new stream's subscription is registered, parked, in the same synchronous
step that computes its backlog, so that no event falls between the backlog
and the live stream; :meth:`Fanout.attach` writes the opening and whatever
came meanwhile when the sink is ready.

Book diffs. A subscription may follow some order book and depth channels in
diff mode (``books``: each such channel and the channel ``seq`` of the book
its client holds, 0 for none). For those, publish writes the event's diff
(made once per event, :class:`app.state.events.Book`) when the client
holds the book the diff starts from, else the whole event, and notes the
book the client now holds. What a paused subscription missed of such a book
collapses into one diff from the book it holds (or the whole event); a
stream resuming with an id gets every missed diff, in order.

The event log keeps the newest events by count and age. A stream that resumes
from an id of this epoch that the log still covers gets every missed event
once, in order (for snapshot channels only the latest state); otherwise it is
told to reset.
"""

from __future__ import annotations

import itertools
import logging
import time

from app.domain import books as levels
from app.domain.values import Json
from app.ports import Ending, Form, Sink, Transport
from app.state.events import Book, Event
from app.streams.admission import Streams
from app.streams.eventlog import EventLog

log = logging.getLogger("coinsuper_gateway.stream")
NONE_HELD = -1  # a book channel in diff mode whose client holds no book
# Every stream is looked at for a heartbeat this many times per heartbeat
# interval (or at every tick, for an interval under as many ticks). Streams
# sit in a wheel of buckets; each tick looks at the buckets its time stands
# for, so that one idle since its last write gets a heartbeat within 1.2
# heartbeat intervals of it and a tick. A look at every stream at every tick
# (twice a second) touched 20,000 streams' state a second at 10,000 streams,
# as many as the deliveries of 20 books pushed twice a second, each out of
# cache.
HEARTBEAT_ROUNDS = 5
HEARTBEAT_BUCKETS = 30


class Subscription:
    """One stream's place in the fan-out, as plain state: the channels it
    follows, its sink, and whether (since when, from where) it is paused."""

    __slots__ = (
        "books",
        "bucket",
        "capacity",
        "channels",
        "client",
        "direct",
        "ended",
        "fanout",
        "form",
        "last_write",
        "missed",
        "paused_at",
        "position",
        "sink",
    )

    def __init__(self, fanout: Fanout, client: str, capacity: int) -> None:
        self.fanout = fanout
        self.client = client
        self.capacity = capacity  # log events it may miss while paused
        self.channels: frozenset[str] = frozenset()
        self.sink: Sink | None = None  # none yet: parked until attached
        # The sink's form and direct transport, read here for each delivery
        # (Sink.direct): the sink's own object is not read then.
        self.form: Form | None = None
        self.direct: Transport | None = None
        now = time.monotonic()
        self.paused_at: float | None = now
        self.position = fanout.head
        self.missed = 0
        self.last_write = now
        self.ended: Ending | None = None
        # Channels followed in diff mode → the channel seq of the book the client holds.
        self.books: dict[str, int] | None = None
        self.bucket = 0  # where in the fan-out's heartbeat wheel it is

    # What the sink calls.
    def pause(self) -> None:
        self.fanout.pause(self)

    def resume(self) -> None:
        self.fanout.resume(self)

    def lost(self) -> None:
        self.fanout.end(self, Ending.GONE)

    def closed_for_data(self) -> None:
        self.direct = None
        # Nothing more goes out: on the send timeout's clock, as a stream
        # whose client reads nothing is, so that a client that never answers
        # the close (and never fills the buffer) cannot keep its connection.
        self.fanout.pause(self)


class Fanout:
    """Subscriptions by channel, written to at publish time."""

    def __init__(self, events: EventLog, streams: Streams, *, send_timeout_s: float) -> None:
        self.events = events  # what a paused subscription catches up from
        self.streams = streams
        self.send_timeout_s = send_timeout_s
        self.by_channel: dict[str, set[Subscription]] = {}
        self.paused: set[Subscription] = set()
        self.head = 0  # the sequence number of the newest event published
        # The newest book published per channel: only it is asked for merged
        # diffs, so an older one's are let go (they would live on in the log).
        self.newest_books: dict[str, Book] = {}
        # The heartbeat wheel, which holds every stream: each in the emptiest
        # bucket, kept for its life; the next bucket to look at, and the
        # share of a bucket owed by the ticks so far; when the last tick was.
        self._wheel: list[set[Subscription]] = [set() for _ in range(HEARTBEAT_BUCKETS)]
        self._next_bucket = 0
        self._owed = 0.0
        self._last_tick: float | None = None

    # --- membership ----------------------------------------------------------

    def subscribe(self, client: str, capacity: int) -> Subscription:
        """A new subscription, parked (paused, with no sink) until attached."""
        subscription = Subscription(self, client, capacity)
        wheel = self._wheel
        subscription.bucket = min(range(len(wheel)), key=lambda index: len(wheel[index]))
        wheel[subscription.bucket].add(subscription)
        self.paused.add(subscription)
        self.streams.opened(client)
        return subscription

    def retarget(self, subscription: Subscription, channels: frozenset[str]) -> None:
        """Make a subscription follow exactly ``channels``."""
        if subscription.ended is not None:
            return
        held = subscription.channels
        for name in held - channels:
            followers = self.by_channel.get(name)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self.by_channel[name]
        for name in channels - held:
            self.by_channel.setdefault(name, set()).add(subscription)
        subscription.channels = channels
        self._drop_books(subscription, held - channels)

    def follow_books(
        self, subscription: Subscription, names: frozenset[str], resync: frozenset[str]
    ) -> None:
        """Follow the books of ``names`` (order book and depth channels) in diff
        mode, before their backlog is computed: a resumed id stands for the
        book the client holds, but for those of ``resync`` (it holds none)."""
        if names:
            books = subscription.books = subscription.books or {}
            for name in names:
                books.setdefault(name, NONE_HELD if name in resync else 0)

    def switch_books(self, subscription: Subscription, names: frozenset[str], diffs: bool) -> None:
        """Book channels the subscription follows already, now in diff mode
        (from no book held: the next update comes whole) or not."""
        if diffs:
            books = subscription.books = subscription.books or {}
            for name in names:
                books.setdefault(name, NONE_HELD)
        else:
            self._drop_books(subscription, names)

    @staticmethod
    def _drop_books(subscription: Subscription, names: frozenset[str]) -> None:
        """Stop following the books of ``names`` in diff mode."""
        books = subscription.books
        if books:
            for name in names:
                books.pop(name, None)
            if not books:
                subscription.books = None

    def view(self, subscription: Subscription, events: list[Event], *, replay: bool) -> list[Event]:
        """What to send a subscription of ``events`` (in order), its books in
        diff mode as diffs where it holds the book a diff starts from. With
        ``replay`` (a resumed id) the client holds each book as it stood at its
        id, and every diff comes; else a book's events collapse into one diff
        from the book it holds, or its newest whole event."""
        books = subscription.books
        if not books:
            return events
        last = {
            event.channel: index for index, event in enumerate(events) if event.book is not None
        }
        out: list[Event] = []
        start: dict[str, int] = {}  # the book a collapsed run starts from
        for index, event in enumerate(events):
            book = event.book
            name = event.channel
            if book is None or name not in books:
                out.append(event)
                continue
            if replay:
                held = books[name] or book.seq - 1  # 0: the book as it stood at the id
                diff = book.diff if held == book.seq - 1 else None
                out.append(diff or event)
                books[name] = book.seq
                continue
            start.setdefault(name, books[name])
            if last[name] == index:
                out.append(self._collapsed(events, name, start[name], event))
                books[name] = book.seq
        return out

    @staticmethod
    def _collapsed(events: list[Event], name: str, held: int, newest: Event) -> Event:
        """One event taking a client from the book of seq ``held`` to
        ``newest``'s: a merged diff when every step is at hand, else ``newest``."""
        book = newest.book
        assert book is not None
        run = [
            e.book for e in events if e.channel == name and e.book is not None and e.book.seq > held
        ]
        if held <= 0 or not run or run[0].seq != held + 1 or any(b.diff is None for b in run):
            return newest
        if any(b.seq != a.seq + 1 for a, b in itertools.pairwise(run)):
            return newest
        if len(run) == 1:
            return book.diff or newest

        def changes() -> dict[str, Json]:
            merged = run[0].changes()
            for step in run[1:]:
                merged = levels.merge(merged, step.changes())
            return merged

        # Made once for every paused stream that held the book of ``held``.
        return book.merged(held, changes) or newest

    def subscribers(self, channel: str) -> int:
        return len(self.by_channel.get(channel, ()))

    def attach(self, subscription: Subscription, sink: Sink, opening: bytes) -> None:
        """Give a parked subscription its sink: one write of ``opening`` and of
        whatever was published since the subscription was registered."""
        if subscription.ended is not None:
            sink.end(subscription.ended)
            return
        subscription.sink = sink
        subscription.form = sink.form
        subscription.direct = sink.direct
        missed = self._missed(subscription)
        if missed is None:
            sink.write(opening)
            self.end(subscription, Ending.OVERFLOW)
            return
        self._write(subscription, opening + self._encode(sink, missed))

    def end(self, subscription: Subscription, ending: Ending) -> None:
        """End a stream: out of the fan-out, its sink closed, its slot freed."""
        if subscription.ended is not None:
            return
        self.retarget(subscription, frozenset())
        subscription.ended = ending
        subscription.direct = None
        self._wheel[subscription.bucket].discard(subscription)
        self.paused.discard(subscription)
        sink = subscription.sink
        if sink is not None and ending is not Ending.GONE:
            sink.end(ending)
        self.streams.closed(subscription.client, ending.value)
        if ending is Ending.STALLED and sink is not None:
            log.info(
                "closed a %s of %s: it took nothing for %g s",
                sink.label,
                subscription.client,
                self.send_timeout_s,
            )
        elif ending is Ending.OVERFLOW and sink is not None:
            log.info(
                "closed a %s of %s that fell %d events behind",
                sink.label,
                subscription.client,
                subscription.capacity,
            )

    @property
    def everyone(self) -> list[Subscription]:
        """Every stream not ended (each is in one bucket of the wheel)."""
        return [subscription for bucket in self._wheel for subscription in bucket]

    def close_all(self, ending: Ending = Ending.SHUTDOWN) -> None:
        for subscription in self.everyone:
            self.end(subscription, ending)

    # --- delivery ------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Write ``event`` to every ready follower of its channel."""
        self.head = event.seq
        if event.book is not None:
            older = self.newest_books.get(event.channel)
            if older is not None and older is not event.book:
                older.forget_merged()
            self.newest_books[event.channel] = event.book
        followers = self.by_channel.get(event.channel)
        if not followers:
            return
        counts_as_missed = not event.conflatable
        book = event.book
        channel = event.channel
        diff: Event | None = None
        diff_made = False  # the diff is made only if a stream in diff mode needs it
        seq = book.seq if book is not None else 0
        prev = seq - 1
        now = time.monotonic()
        form: Form | None = None
        diff_form: Form | None = None
        data = diff_data = b""
        written = 0
        overflowing: list[Subscription] = []
        # A copy: a write may end a stream (and so change the set).
        for subscription in tuple(followers):
            if subscription.paused_at is not None:
                if counts_as_missed:
                    subscription.missed += 1
                    if subscription.missed > subscription.capacity:
                        overflowing.append(subscription)
                continue
            subscription.last_write = now
            written += 1
            its_form = subscription.form
            assert its_form is not None  # only a parked subscription has none, and it is paused
            payload: bytes | None = None
            books = subscription.books
            if books is not None and book is not None and channel in books:
                held = books[channel]
                books[channel] = seq
                if held == prev:
                    if not diff_made:
                        diff, diff_made = book.diff, True
                    if diff is not None:
                        if its_form is not diff_form:
                            diff_form = its_form
                            diff_data = diff.wire(its_form)
                        payload = diff_data
            if payload is None:
                if its_form is not form:
                    form = its_form
                    data = event.wire(its_form)
                payload = data
            direct = subscription.direct
            if direct is None:
                sink = subscription.sink
                assert sink is not None  # attached: it is not paused
                sink.write(payload)
            elif not direct.is_closing():
                direct.write(payload)
        streams = self.streams
        streams.sent(written)
        if written and event.received_ts:
            # Never below 0: the leader's clock may run ahead of this replica's.
            streams.lag.observe(max(0.0, time.time() - event.received_ts / 1000))
        for subscription in overflowing:
            self.end(subscription, Ending.OVERFLOW)

    def pause(self, subscription: Subscription) -> None:
        """The sink's connection is full: from here, only a position is kept."""
        if subscription.paused_at is None and subscription.ended is None:
            subscription.paused_at = time.monotonic()
            subscription.position = self.head
            subscription.missed = 0
            self.paused.add(subscription)

    def resume(self, subscription: Subscription) -> None:
        """The sink's connection drained: catch up from the position, in one write."""
        if subscription.paused_at is None or subscription.ended is not None:
            return
        sink = subscription.sink
        if sink is None:
            return  # parked: attach catches it up
        missed = self._missed(subscription)
        if missed is None:
            self.end(subscription, Ending.OVERFLOW)
            return
        self._write(subscription, self._encode(sink, missed))

    def catch_up(self, subscription: Subscription) -> bool:
        """Write what a paused subscription missed now, though its connection
        is still full, and move its position to the head (before its channels
        change, so that the position covers them all). What it writes is
        bounded: its capacity of log events and a snapshot per channel. False
        if it overflowed instead."""
        if subscription.paused_at is None or subscription.sink is None:
            return subscription.ended is None
        missed = self._missed(subscription)
        if missed is None:
            self.end(subscription, Ending.OVERFLOW)
            return False
        sink = subscription.sink
        subscription.position = self.head
        subscription.missed = 0
        if missed:
            sink.write(self._encode(sink, missed))
        return True

    def _missed(self, subscription: Subscription) -> list[Event] | None:
        """What a paused subscription must be sent to stand at the head; None
        when log events it missed are no longer in the log."""
        books = subscription.books
        missed = self.events.since(
            subscription.position, subscription.channels, frozenset(books or ())
        )
        if missed is None:
            if subscription.missed:
                return None
            # Only snapshots were missed: the current ones are as good.
            position = subscription.position
            missed = [e for e in self.events.latest(subscription.channels) if e.seq > position]
        return self.view(subscription, missed, replay=False) if books else missed

    def _encode(self, sink: Sink, events: list[Event]) -> bytes:
        """Events in the sink's wire form, in one piece, counted as sent."""
        self.streams.sent(len(events))
        return b"".join(event.wire(sink.form) for event in events)

    def _write(self, subscription: Subscription, data: bytes) -> None:
        """Unpause and write: a write that fills the connection pauses it
        again, at the head, since everything up to the head is in ``data``."""
        sink = subscription.sink
        assert sink is not None
        subscription.paused_at = None
        subscription.missed = 0
        self.paused.discard(subscription)
        subscription.last_write = time.monotonic()
        if data:
            sink.write(data)

    def write(self, subscription: Subscription, data: bytes) -> None:
        """Write bytes that are not events (an acknowledgement) to a stream,
        paused or not: they are small and bounded by the op rate."""
        if subscription.ended is None and subscription.sink is not None:
            subscription.sink.write(data)

    def tick(self, now: float, heartbeat_s: float) -> None:
        """Run about twice a second: a stream paused past the send timeout (a
        client that stopped reading, or a response that never started) is
        dropped; a stream idle for ``heartbeat_s`` gets a heartbeat, within
        a fifth of it more and a tick (:data:`HEARTBEAT_ROUNDS`)."""
        timeout = self.send_timeout_s
        for subscription in list(self.paused):
            paused_at = subscription.paused_at
            if paused_at is not None and now - paused_at > timeout:
                self.end(subscription, Ending.STALLED)
        self._heartbeats(now, heartbeat_s)

    def _heartbeats(self, now: float, heartbeat_s: float) -> None:
        """Look at the buckets of the wheel that the time since the last tick
        stands for, a turn of the wheel taking ``heartbeat_s`` /
        :data:`HEARTBEAT_ROUNDS` (what a tick owes beyond whole buckets is
        carried to the next); the whole wheel at once when that time is a
        turn or more. A heartbeat on each stream there that is ready and
        idle for ``heartbeat_s``."""
        round_s = heartbeat_s / HEARTBEAT_ROUNDS
        since = round_s if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        wheel = self._wheel
        if since >= round_s:
            buckets, self._owed = len(wheel), 0.0
        else:
            self._owed += len(wheel) * since / round_s
            buckets = min(len(wheel), int(self._owed))
            self._owed -= buckets
        for _ in range(buckets):
            bucket = wheel[self._next_bucket]
            self._next_bucket = (self._next_bucket + 1) % len(wheel)
            for subscription in tuple(bucket):  # a copy: a write may end a stream
                if (
                    subscription.paused_at is None
                    and subscription.ended is None
                    and now - subscription.last_write >= heartbeat_s
                ):
                    subscription.last_write = now
                    assert subscription.sink is not None
                    subscription.sink.heartbeat()
