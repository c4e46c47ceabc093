"""The gateway's streams: :class:`GatewayStream`.

    async with GatewayStream("http://gateway:8000", ["trades:BTC_USD"]) as stream:
        async for event in stream:
            ...

:class:`GatewayStream` is an async iterator of :class:`StreamEvent` over
Server-Sent Events (httpx) or the WebSocket endpoint (httpx-ws). When the
connection drops, or the gateway ends it (a slow reader's overflow, a
restart), it reconnects with capped, jittered backoff and resumes from the
last id it saw, so that the caller sees every event exactly once, in order,
with no code of its own. When the gateway cannot resume (it restarted, or its
buffer passed the id), the caller gets an event named ``reset`` followed by
fresh snapshots. A refused request (bad channel, missing token, a cap) is
raised as :class:`StreamRefused`: retrying would not mend it.

With ``books="diff"`` the gateway sends order books and depth charts as level
diffs with a CRC32 checksum; the stream keeps each book, applies each diff,
checks its ``prev_seq`` and its checksum, and hands the caller whole books
(events ``orderbook`` / ``depth``, as in the default mode). A diff it cannot
prove is never handed out: it is counted (``mismatches``) and the channel is
asked for again, whole.
"""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import httpx
from httpx_ws import AsyncWebSocketSession, HTTPXWSException, WebSocketDisconnect, aconnect_ws

from coinsuper_gateway_client._problems import GatewayError, refused

APPEND_ONLY = frozenset({"trade", "order", "fill"})
DIFFS = {"orderbook_diff": "orderbook", "depth_diff": "depth"}
SIDES = ("bids", "asks")
# What a dropped link raises; the stream resumes after any of them.
DROPS = (httpx.HTTPError, HTTPXWSException, WebSocketDisconnect, OSError)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event: its id (``EPOCH-SEQ``; none for ``reset``), name and data."""

    id: str | None
    event: str
    data: dict[str, Any]


class StreamRefused(GatewayError):
    """The gateway refused the stream (a 4xx problem); ``problem`` says why."""


async def sse_blocks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, str], None]:
    """The field blocks of a Server-Sent Events stream (comments skipped),
    one dict per blank-line-terminated block that has any field."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line:
            if not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
            continue
        if fields:
            yield fields
        fields = {}


def book_checksum(book: dict[str, Any]) -> int:
    """The gateway's (Kraken's) CRC32 of a book: the top 10 asks then the top
    10 bids, each price then quantity with the point and leading zeros removed."""

    def digits(text: str) -> str:
        return text.replace(".", "").lstrip("0")

    levels = [*book["asks"][:10], *book["bids"][:10]]
    return zlib.crc32("".join(digits(p) + digits(q) for p, q in levels).encode("ascii"))


def apply_diff(book: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The book a diff's ``data`` makes of ``book``: each pair sets a level's
    quantity, ``"0"`` removes it; other fields are set; levels best first."""
    result = {**book, **{k: v for k, v in data.items() if k not in SIDES}}
    for side in SIDES:
        levels = {price: quantity for price, quantity in book[side]}
        for price, quantity in data.get(side, ()):
            if quantity == "0":
                levels.pop(price, None)
            else:
                levels[price] = quantity
        ordered = sorted(
            levels.items(), key=lambda level: Decimal(level[0]), reverse=side == "bids"
        )
        result[side] = [[price, quantity] for price, quantity in ordered]
    return result


def _position(event_id: str) -> tuple[str, int]:
    epoch, _, seq = event_id.rpartition("-")
    return epoch, int(seq) if seq.isascii() and seq.isdigit() else -1


async def _close(session: AsyncGenerator[StreamEvent, None]) -> None:
    """Close a connection's events. httpx-ws closes its session from a task
    group, which wraps the generator's GeneratorExit in a group: that is the
    close asked for, not an error."""
    try:
        await session.aclose()
    except BaseExceptionGroup as group:
        if group.split(GeneratorExit)[1] is not None:
            raise


class GatewayStream:
    """Follows channels, reconnecting and resuming by itself."""

    def __init__(
        self,
        base_url: str,
        channels: Sequence[str],
        *,
        transport: Literal["sse", "websocket"] = "sse",
        token: str | None = None,
        last_event_id: str | None = None,
        books: Literal["full", "diff"] = "full",
        first_delay: float = 0.2,
        max_delay: float = 5.0,
    ) -> None:
        if books not in ("full", "diff"):
            raise ValueError("books: 'full' or 'diff'")
        self.base_url = base_url.rstrip("/")
        self.books = books
        # Diff mode: each book channel's newest proven book, its seq and envelope.
        self.held: dict[str, dict[str, Any]] = {}
        self.mismatches = 0  # diffs that could not be proven (the channel was asked for again)
        # Channels owed a whole book (a diff could not be proven): asked for
        # whole on every connection until it comes.
        self._asked: set[str] = set()
        self._reconnect = False  # SSE: ask again now, on a new connection
        self._ws: AsyncWebSocketSession | None = None
        self.channels = list(channels)
        self.transport = transport
        self.token = token
        self.last_event_id = last_event_id
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.reconnects = 0
        self._events: AsyncGenerator[StreamEvent, None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._closed:
            raise RuntimeError("this stream is closed: make a new GatewayStream")
        if self._events is None:
            self._events = self._follow()
        return self._events

    async def aclose(self) -> None:
        """Close the connection. A caller that stops iterating before the
        stream ends (a ``break``, a ``return``) closes it, or uses
        ``async with``: an abandoned connection is closed only when it is
        collected, outside the task that opened it. It is called from the
        task that iterates; to stop a stream from another task, cancel that
        task (the connection closes as the cancellation passes through)."""
        self._closed = True
        if self._events is not None and not getattr(self._events, "ag_running", False):
            await self._events.aclose()

    async def __aenter__(self) -> GatewayStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _follow(self) -> AsyncGenerator[StreamEvent, None]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        failures = 0
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(10, read=None)) as http:
            while True:
                session = self._sse(http) if self.transport == "sse" else self._websocket(http)
                try:
                    async for event in session:
                        failures = 0
                        if self._seen(event):
                            continue
                        if self.books == "diff":
                            book = await self._book(event)
                            if book is None:
                                if self._reconnect:
                                    break  # ask again: a new connection, at once
                                continue
                            event = book
                        yield event
                except DROPS:
                    pass  # the link dropped: resume below
                except BaseExceptionGroup as group:  # httpx-ws raises from its task group
                    refusal = group.subgroup(StreamRefused)
                    if refusal is not None:
                        raise refusal.exceptions[0] from None
                    if group.split(DROPS)[1] is not None:  # something other than a drop
                        raise
                finally:
                    await _close(session)
                if self._reconnect:
                    self._reconnect = False
                    continue  # not a drop: no wait
                delay = min(self.max_delay, self.first_delay * 2**failures) * random.uniform(0.5, 1)
                failures += 1
                self.reconnects += 1
                await asyncio.sleep(delay)

    def _seen(self, event: StreamEvent) -> bool:
        """Keeps the cursor; True for an append-only event already delivered."""
        if event.id is None:
            return False
        if self.last_event_id is None:
            self.last_event_id = event.id
            return False
        epoch, seq = _position(event.id)
        last_epoch, last_seq = _position(self.last_event_id)
        if epoch != last_epoch or seq > last_seq:
            self.last_event_id = event.id
            return False
        return event.event in APPEND_ONLY and seq <= last_seq

    async def _book(self, event: StreamEvent) -> StreamEvent | None:
        """Diff mode: keep whole books, prove and apply diffs; the event to hand
        out, a whole book for a diff, or None for a diff that cannot be proven."""
        name = DIFFS.get(event.event)
        if event.event == "reset":
            self.held.clear()
        if event.event in ("orderbook", "depth"):
            self.held[event.data["channel"]] = event.data
            self._asked.discard(event.data["channel"])
            return event
        if name is None:
            return event
        diff = event.data
        channel = diff["channel"]
        if channel in self._asked:
            return None  # asked for whole already: what comes before it is moot
        held = self.held.get(channel)
        if held is not None and held["seq"] == diff["prev_seq"]:
            book = apply_diff(held["data"], diff["data"])
            if book_checksum(book) == diff["checksum"]:
                whole = {
                    key: diff[key]
                    for key in ("channel", "symbol", "seq", "exchange_ts", "received_ts")
                }
                whole.update(stale=False, data=book)
                self.held[channel] = whole
                return StreamEvent(event.id, name, whole)
        self.mismatches += 1
        self.held.pop(channel, None)
        self._asked.add(channel)
        await self._ask_again(channel)
        return None

    async def _ask_again(self, channel: str) -> None:
        """Ask for a channel whose copy could not be proven, whole."""
        if self.transport == "sse":
            self._reconnect = True
            return
        if self._ws is not None:
            await self._resubscribe(self._ws, [channel])

    @staticmethod
    async def _resubscribe(ws: AsyncWebSocketSession, channels: list[str]) -> None:
        """On the WebSocket: channels unsubscribed and subscribed again, whole first."""
        await ws.send_text(json.dumps({"op": "unsubscribe", "channels": channels}))
        await ws.send_text(json.dumps({"op": "subscribe", "channels": channels, "books": "diff"}))

    async def _sse(self, http: httpx.AsyncClient) -> AsyncGenerator[StreamEvent, None]:
        url = f"{self.base_url}/v1/stream?channels={quote(','.join(self.channels), safe=':,')}"
        if self.books == "diff":
            url += "&books=diff"
            if self._asked:
                url += "&resync=" + quote(",".join(sorted(self._asked)), safe=":,")
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        async with http.stream("GET", url, headers=headers) as response:
            if 400 <= response.status_code < 500:
                await response.aread()
                problem = refused(response)
                raise StreamRefused(problem.problem, problem.retry_after)
            response.raise_for_status()
            async for fields in sse_blocks(response.aiter_lines()):
                if "data" in fields:
                    yield StreamEvent(
                        fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
                    )
                elif "id" in fields:  # a position: the cursor moves, no event
                    self._seen(StreamEvent(fields["id"], "position", {}))

    async def _websocket(self, http: httpx.AsyncClient) -> AsyncGenerator[StreamEvent, None]:
        url = f"{self.base_url}/v1/ws"
        ws: AsyncWebSocketSession
        async with aconnect_ws(url, http) as ws:
            self._ws = ws
            subscribe: dict[str, Any] = {"op": "subscribe", "channels": self.channels}
            if self.books == "diff":
                subscribe["books"] = "diff"
            if self.last_event_id:
                subscribe["last_event_id"] = self.last_event_id
            await ws.send_text(json.dumps(subscribe))
            if self._asked:  # still owed whole books: asked for again on this connection
                await self._resubscribe(ws, sorted(self._asked))
            while True:
                message = json.loads(await ws.receive_text())
                if message.get("op") == "error":
                    raise StreamRefused(message)
                if "op" in message:
                    # The acknowledgement comes before the missed events: its
                    # position is the cursor only for a stream with none yet.
                    if message.get("position") and self.last_event_id is None:
                        self._seen(StreamEvent(message["position"], "position", {}))
                    continue
                yield StreamEvent(message.get("id"), message["event"], message["data"])
