"""``GET /v1/stream``: Server-Sent Events over any number of channels.

This module admits a stream and says what it opens with: ``retry:``, a
``reset`` if its id could not be resumed, the current snapshots (or, resuming,
every missed event once, in order) and an id-only block at its position. From
there the fan-out writes each event to it when it is published, a heartbeat
comment when it is idle (app/streams/fanout.py, app/http/sinks.py).
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from app.domain.channels import BOOK_KINDS, Channel, parse_channel_list
from app.domain.errors import InvalidInput
from app.http import schemas
from app.http.auth import presented_token
from app.http.rest import PortsDep, private_access, tokens_of
from app.http.sinks import run_sse
from app.ports import Feed, Opening

router = APIRouter()

STREAM_DESCRIPTION = """Server-Sent Events. Every event has an id `EPOCH-SEQ` and one line of JSON data.

Events: `orderbook`, `depth`, `kline`, `assets` (the snapshot envelope, as REST);
`trade`, `order`, `fill` (one item per event: `{channel, symbol, seq, exchange_ts,
received_ts, data}`); `status` (`{channel, status, reason, ts}`, status one of
connecting, live, stale, failed; on a trades channel, reason `gap` with a
`detail` says a push shared nothing with the previous full window, so trades
may be missing between them); `reset` (`{reason, epoch, channels}`: the given
`Last-Event-ID` cannot be resumed, fresh snapshots follow).

The stream opens with `retry:`, the current snapshots (or, resuming, every
missed event once, in order) and a block holding only an `id:`, the newest
event's id (a client dropped before any live event resumes from it); a
`: heartbeat` comment is sent when idle.

With `books=diff`, order book and depth channels send their whole event first
and then `orderbook_diff` / `depth_diff` events (`{channel, symbol, seq,
prev_seq, exchange_ts, received_ts, data: {bids, asks}, checksum}`): each level
pair sets that price's quantity, `"0"` removes it, and `checksum` is the CRC32
of the resulting top 10 asks and bids (docs/api.md, "Book diffs"). `resync`
names channels whose whole event a resuming client wants first (it could not
prove its copy)."""

BOOK_MODES = "full, diff"


def diff_mode(value: object) -> bool:
    """``books``: whether order books and depth charts come as diffs."""
    if value is None or value == "full":
        return False
    if value == "diff":
        return True
    shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "that value"
    raise InvalidInput("books", f"{shown} is not a book mode", BOOK_MODES)


def resync_channels(text: str | None, wanted: list[Channel], cap: int) -> frozenset[str]:
    """``resync``: book channels of the stream whose whole event comes first."""
    if not text:
        return frozenset()
    names = {channel.name for channel in wanted if channel.kind in BOOK_KINDS}
    asked = parse_channel_list(text, cap=cap)
    stray = [channel.name for channel in asked if channel.name not in names]
    if stray:
        raise InvalidInput(
            "resync",
            f"{stray[0]!r} is not an order book or depth channel of this stream",
            "order book and depth channels named in channels",
        )
    return frozenset(channel.name for channel in asked)


class StreamResponse(Response):
    """An SSE response whose connection the fan-out writes to (app/http/sinks.py)."""

    def __init__(
        self, feed: Feed, opening: Opening, first: bytes, *, send_buffer: int, write_buffer: int
    ) -> None:
        # A Response for the framework's sake; nothing of Response.__init__ applies.
        self.status_code = 200
        self.background = None
        self.raw_headers = []
        self.feed = feed
        self.opening = opening
        self.first = first
        self.send_buffer = send_buffer
        self.write_buffer = write_buffer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_sse(
            scope,
            receive,
            send,
            self.feed,
            self.opening.stream,
            self.first,
            send_buffer=self.send_buffer,
            write_buffer=self.write_buffer,
        )


@router.get(
    "/v1/stream",
    tags=["streams"],
    response_class=Response,
    responses={
        200: {
            "description": STREAM_DESCRIPTION,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **schemas.problems(400, 401, 404, 429),
    },
)
async def stream(
    request: Request,
    ports: PortsDep,
    channels: Annotated[str | None, Query(description="comma-separated channel names")] = None,
    last_event_id: Annotated[
        str | None, Query(description="resume point, for clients that cannot set Last-Event-ID")
    ] = None,
    access_token: Annotated[
        str | None, Query(description="bearer token, for clients that cannot set headers")
    ] = None,
    books: Annotated[
        str | None,
        Query(description="full (the default) or diff: order books and depth charts as diffs"),
    ] = None,
    resync: Annotated[
        str | None,
        Query(
            description="with books=diff: channels whose whole event comes first (comma-separated)"
        ),
    ] = None,
) -> StreamResponse:
    """Follow channels as Server-Sent Events (docs/api.md: events and ids)."""
    settings = ports.settings
    wanted = parse_channel_list(channels or "", cap=settings.gateway_max_channels_per_stream)
    diffs = diff_mode(books)
    fresh = resync_channels(resync, wanted, settings.gateway_max_channels_per_stream)
    if any(channel.is_private for channel in wanted):
        private_access(request, allow_query=True)
    elif settings.gateway_require_token:
        tokens_of(request).require(request, allow_query=True)
    client = client_key(request)
    ports.streams.admit(client)
    for channel in wanted:
        if not channel.is_private:
            ports.demand.demand(channel)
    resume_from = request.headers.get("last-event-id") or last_event_id
    feed = ports.feed
    if feed.behind(resume_from):
        # An id from a replica that is ahead of this one: read the log up to it.
        await feed.reach(resume_from, settings.gateway_wait_default_ms / 1000)
    # Registered now, in the step that computes its backlog: nothing published
    # from here on is lost before the response takes the connection over.
    opening = feed.open(
        client, wanted, resume_from, settings.gateway_client_buffer, diffs=diffs, resync=fresh
    )
    return StreamResponse(
        feed,
        opening,
        _opening_bytes(feed, wanted, opening, settings.gateway_retry_ms),
        send_buffer=settings.gateway_stream_send_buffer,
        write_buffer=settings.gateway_stream_write_buffer,
    )


def _opening_bytes(feed: Feed, channels: list[Channel], opening: Opening, retry_ms: int) -> bytes:
    first = [f"retry: {retry_ms}\n\n".encode()]
    if opening.reset:
        first.append(feed.reset_event(channel.name for channel in channels).frame)
    first.extend(event.frame for event in opening.backlog)
    # An id with no data moves the client's Last-Event-ID without an event:
    # dropped before any event, it still resumes from here, losing nothing.
    first.append(f"id: {opening.position}\n\n".encode())
    return b"".join(first)


def client_key(request: HTTPConnection) -> str:
    """Streams are counted per valid token where one is given, else per
    address: a made-up token is no way around the per-address cap."""
    token = presented_token(request)
    if token and tokens_of(request).accepts(token):
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return "address:" + (request.client.host if request.client else "unknown")
