"""A stream's events and their encodings: the one JSON encoding of every
answer and event, and each event's wire forms, made once. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec

from app.domain import books
from app.domain.values import Json

# Compact UTF-8 JSON, byte for byte what ``json.dumps(value, separators=(",",
# ":"), ensure_ascii=False).encode()`` writes for these values, ten times as fast.
dumps: Callable[[Json | msgspec.Struct], bytes] = msgspec.json.Encoder().encode
"""Compact JSON, the one encoding of every answer and event."""
loads = msgspec.json.decode


class Event:
    """One event of a stream. Its wire forms, the SSE frame and the WebSocket
    text, are made once each, when the first client of that form needs them,
    and then shared by every such client (an event no WebSocket client follows
    never makes its WebSocket text)."""

    __slots__ = (
        "_frame",
        "_message",
        "_wire",
        "book",
        "channel",
        "conflatable",
        "data",
        "id",
        "name",
        "received_ts",
        "seq",
    )

    def __init__(
        self,
        seq: int,
        channel: str,
        name: str,
        data: bytes,
        *,
        event_id: str | None,
        conflatable: bool,
        received_ts: int,
    ) -> None:
        self.seq = seq
        self.channel = channel  # channel name; status events use the name of their channel
        self.name = name  # SSE event name
        self.data = data  # one line of JSON
        self.id = event_id  # EPOCH-SEQ; None for an event outside the log (reset)
        self.conflatable = conflatable  # a later event of the same channel and name supersedes it
        self.received_ts = received_ts
        self._frame: bytes | None = None
        self._message: str | None = None
        self._wire: dict[Callable[[Event], bytes], bytes] | None = None
        self.book: Book | None = None  # an order book's or depth chart's state: its diff

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.name)

    @property
    def frame(self) -> bytes:
        """The whole SSE frame: id, event and data lines."""
        if self._frame is None:
            self._frame = sse_frame(self.id, self.name, self.data)
        return self._frame

    @property
    def message(self) -> str:
        """The WebSocket text frame: ``{"id", "event", "data"}``."""
        if self._message is None:
            self._message = ws_message(self.id, self.name, self.data)
        return self._message

    def wire(self, form: Callable[[Event], bytes]) -> bytes:
        """The bytes of this event in a transport's wire form (an HTTP chunk of
        the SSE frame, a WebSocket frame of the text), made by ``form`` the
        first time a client of that form needs them and shared by the rest."""
        made = self._wire
        if made is None:
            made = self._wire = {}
        data = made.get(form)
        if data is None:
            data = made[form] = form(self)
        return data

    def __repr__(self) -> str:
        return f"Event({self.id!r}, {self.channel!r}, {self.name!r})"


MERGED_KEPT = 8  # merged diffs kept per book (by the seq they start from)


class Book:
    """What an ``orderbook`` / ``depth`` event is as a book: the channel's own
    ``seq``, and the ``previous`` book's bytes, from which its diff event
    (``orderbook_diff`` / ``depth_diff``, with the checksum) is made once, the
    first time a stream in diff mode needs it, and shared by every such stream
    (None for the first book, or when it would not be smaller than the whole
    event). Until then a book costs ingest nothing: no parse, no diff."""

    __slots__ = (
        "_changes",
        "_diff",
        "_made",
        "_merged",
        "channel",
        "data",
        "event_id",
        "event_seq",
        "name",
        "previous",
        "received_ts",
        "seq",
    )

    def __init__(self, event: Event, seq: int, previous: bytes | None) -> None:
        self.seq = seq  # the channel's own sequence number: the REST answer's seq
        self.previous = previous  # the whole event's data of seq - 1 (dropped once used)
        # The event's identity, for its diff (not the event: no reference cycle).
        self.event_seq = event.seq
        self.event_id = event.id
        self.channel = event.channel
        self.name = event.name
        self.received_ts = event.received_ts
        self.data = event.data
        self._made = False
        self._diff: Event | None = None
        self._changes: dict[str, Json] | None = None
        # Merged diffs from an older book (by its seq), shared by every paused
        # stream that held that book: a few, the newest asked.
        self._merged: dict[int, Event | None] | None = None

    @property
    def diff(self) -> Event | None:
        """The diff event from the book of ``seq - 1`` (made the first time)."""
        if not self._made:
            self._made = True
            previous, self.previous = self.previous, None
            if previous is not None:
                new = loads(self.data)
                if not _has_literal_zero(new["data"]):
                    changes = books.book_changes(loads(previous)["data"], new["data"])
                    self._diff = self._diff_event(new, self.seq - 1, changes)
        return self._diff

    def changes(self) -> dict[str, Json]:
        """The diff's ``data`` (for merging the diffs of a paused stream)."""
        diff = self.diff
        assert diff is not None
        if self._changes is None:
            self._changes = loads(diff.data)["data"]
        return self._changes

    def forget_merged(self) -> None:
        """A newer book is out: no stream will ask this one for a merged diff again."""
        self._merged = None

    def merged(self, prev_seq: int, changes: Callable[[], Mapping[str, Json]]) -> Event | None:
        """A diff event from the book of ``prev_seq`` to this one (a paused
        stream's missed diffs merged, ``changes`` made only if it is not at
        hand yet); None when not smaller than the event."""
        merged = self._merged
        if merged is None:
            merged = self._merged = {}
        if prev_seq in merged:
            return merged[prev_seq]
        if len(merged) >= MERGED_KEPT:
            merged.clear()
        event = merged[prev_seq] = self._diff_event(loads(self.data), prev_seq, changes())
        return event

    def _diff_event(
        self, whole: Mapping[str, Json], prev_seq: int, changes: Mapping[str, Json]
    ) -> Event | None:
        data = whole["data"]
        assert isinstance(data, Mapping)
        head: dict[str, Json] = {
            "channel": self.channel,
            "symbol": whole["symbol"],
            "seq": self.seq,
            "prev_seq": prev_seq,
            "exchange_ts": whole["exchange_ts"],
            "received_ts": whole["received_ts"],
        }
        checksum = books.checksum(data["bids"], data["asks"])  # type: ignore[arg-type]
        body = dumps(head)[:-1] + b',"data":' + dumps(changes) + b',"checksum":%d}' % checksum
        if len(body) >= len(self.data):
            return None
        return Event(
            self.event_seq,
            self.channel,
            self.name + "_diff",
            body,
            event_id=self.event_id,
            conflatable=True,
            received_ts=self.received_ts,
        )


def _has_literal_zero(data: Mapping[str, Json]) -> bool:
    """True when a level's quantity is the string ``"0"`` itself: a diff
    would read it as a removal, so such a book goes out whole."""
    return any(
        level[1] == books.REMOVED  # type: ignore[index]
        for side in books.SIDES
        for level in data[side]  # type: ignore[union-attr]
    )


def sse_frame(event_id: str | None, name: str, data: bytes) -> bytes:
    head = b"id: " + event_id.encode() + b"\n" if event_id is not None else b""
    return head + b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def ws_message(event_id: str | None, name: str, data: bytes) -> str:
    shown = f'"{event_id}"' if event_id is not None else "null"
    return f'{{"id":{shown},"event":"{name}","data":{data.decode()}}}'


def restamped(event: Event, epoch: str, seq: int) -> Event:
    """The same event under another id: a snapshot sent as the state at ``seq``."""
    again = Event(
        seq,
        event.channel,
        event.name,
        event.data,
        event_id=f"{epoch}-{seq}",
        conflatable=event.conflatable,
        received_ts=event.received_ts,
    )
    again.book = event.book
    return again
