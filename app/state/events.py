"""A stream's events and their encodings: the one JSON encoding of every
answer and event, and each event's wire forms, made once. Pure."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from app.domain import books
from app.domain.values import Json


def dumps(value: Json) -> bytes:
    """Compact JSON, the one encoding of every answer and event."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


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


class Book:
    """What an ``orderbook`` / ``depth`` event is as a book: the channel's own
    ``seq``, the checksum, and the diff event from the book of ``seq - 1``
    (None for the first, or when it would not be smaller than the event),
    made once, when the book is applied, for every stream in diff mode."""

    __slots__ = ("_changes", "checksum", "diff", "exchange_ts", "seq", "symbol")

    def __init__(
        self, seq: int, symbol: str | None, exchange_ts: int | None, checksum: int
    ) -> None:
        self.seq = seq  # the channel's own sequence number: the REST answer's seq
        self.symbol = symbol
        self.exchange_ts = exchange_ts
        self.checksum = checksum
        self.diff: Event | None = None
        self._changes: dict[str, Json] | None = None

    def changes(self) -> dict[str, Json]:
        """The diff's ``data`` (for merging the diffs of a paused stream),
        parsed from its bytes the first time a stream needs it."""
        assert self.diff is not None
        if self._changes is None:
            self._changes = json.loads(self.diff.data)["data"]
        return self._changes


def with_book(
    event: Event,
    seq: int,
    symbol: str | None,
    exchange_ts: int | None,
    data: Mapping[str, Json],
    previous: Mapping[str, Json] | None,
) -> Event:
    """``event`` (a book's) with its :class:`Book`, its diff from ``previous``."""
    bids, asks = data["bids"], data["asks"]
    book = event.book = Book(seq, symbol, exchange_ts, books.checksum(bids, asks))  # type: ignore[arg-type]
    if previous is not None and not _has_literal_zero(data):
        book.diff = diff_event(event, book, seq - 1, books.book_changes(previous, data))
    return event


def _has_literal_zero(data: Mapping[str, Json]) -> bool:
    """True when a level's quantity is the string ``"0"`` itself: a diff
    would read it as a removal, so such a book goes out whole."""
    return any(
        level[1] == books.REMOVED  # type: ignore[index]
        for side in books.SIDES
        for level in data[side]  # type: ignore[union-attr]
    )


def diff_event(
    event: Event, book: Book, prev_seq: int, changes: Mapping[str, Json]
) -> Event | None:
    """The ``*_diff`` event taking a stream from the book of ``prev_seq`` to
    ``event``'s; None when it would not be smaller than ``event`` itself."""
    head: dict[str, Json] = {
        "channel": event.channel,
        "symbol": book.symbol,
        "seq": book.seq,
        "prev_seq": prev_seq,
        "exchange_ts": book.exchange_ts,
        "received_ts": event.received_ts,
    }
    data = dumps(head)[:-1] + b',"data":' + dumps(changes) + b',"checksum":%d}' % book.checksum
    if len(data) >= len(event.data):
        return None
    diff = Event(
        event.seq,
        event.channel,
        event.name + "_diff",
        data,
        event_id=event.id,
        conflatable=True,
        received_ts=event.received_ts,
    )
    return diff


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
