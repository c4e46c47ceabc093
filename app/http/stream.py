"""``GET /v1/stream``: Server-Sent Events over any number of channels.

Each event's frame was encoded once by the store; this module only decides
which frames a stream gets and when. A stream starts with the current
snapshots (or, resuming, with what it missed), then takes what the fan-out put
in its buffer whenever it is woken, and sends a heartbeat comment when nothing
else was sent for the heartbeat interval.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.requests import HTTPConnection

from app.admission import reset_payload
from app.channels import Channel, parse_channel_list
from app.gateway import Gateway
from app.http import schemas
from app.http.auth import presented_token
from app.http.eventstream import EventStreamResponse
from app.http.rest import GatewayDep, private_access, tokens_of
from app.hub import Opening
from app.store import sse_frame

router = APIRouter()
log = logging.getLogger("coinsuper_gateway.stream")

HEARTBEAT = b": heartbeat\n\n"
STREAM_DESCRIPTION = """Server-Sent Events. Every event has an id `EPOCH-SEQ` and one line of JSON data.

Events: `orderbook`, `depth`, `kline`, `assets` (the snapshot envelope, as REST);
`trade`, `order`, `fill` (one item per event: `{channel, symbol, seq, exchange_ts,
received_ts, data}`); `status` (`{channel, status, reason, ts}`, status one of
connecting, live, stale, failed; on a trades channel, reason `gap` with a
`detail` says a push shared nothing with the previous full window, so trades
may be missing between them); `reset` (`{reason, epoch, channels}`: the given
`Last-Event-ID` cannot be resumed, fresh snapshots follow).

The stream opens with `retry:` and the current snapshots (or, resuming, every
missed event once, in order); a `: heartbeat` comment is sent when idle."""


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
    gateway: GatewayDep,
    channels: Annotated[str | None, Query(description="comma-separated channel names")] = None,
    last_event_id: Annotated[
        str | None, Query(description="resume point, for clients that cannot set Last-Event-ID")
    ] = None,
    access_token: Annotated[
        str | None, Query(description="bearer token, for clients that cannot set headers")
    ] = None,
) -> EventStreamResponse:
    """Follow channels as Server-Sent Events (see API.md for events and ids)."""
    settings = gateway.settings
    wanted = parse_channel_list(channels or "", cap=settings.gateway_max_channels_per_stream)
    if any(channel.is_private for channel in wanted):
        private_access(request, allow_query=True)
    elif settings.gateway_require_token:
        tokens_of(request).require(request, allow_query=True)
    client = client_key(request)
    gateway.streams.admit(client)
    for channel in wanted:
        if not channel.is_private:
            gateway.registry.demand(channel)
    resume_from = request.headers.get("last-event-id") or last_event_id
    # Registered now, and released by the body's finally, which is sure to run
    # (the response closes the body however the stream ends).
    opening = gateway.hub.open_stream(wanted, resume_from, settings.gateway_client_buffer)
    return EventStreamResponse(
        _events(gateway, wanted, opening, client),
        opening.subscription,
        send_buffer=settings.gateway_stream_send_buffer,
        write_buffer=settings.gateway_stream_write_buffer,
    )


def client_key(request: HTTPConnection) -> str:
    """Streams are counted per valid token where one is given, else per
    address: a made-up token is no way around the per-address cap."""
    token = presented_token(request)
    if token and tokens_of(request).accepts(token):
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return "address:" + (request.client.host if request.client else "unknown")


async def _events(
    gateway: Gateway, channels: list[Channel], opening: Opening, client: str
) -> AsyncIterator[bytes]:
    settings = gateway.settings
    streams = gateway.streams
    subscription = opening.subscription
    with streams.opened(client):
        try:
            first = [f"retry: {settings.gateway_retry_ms}\n\n".encode()]
            if opening.reset:
                data = reset_payload(gateway.hub.epoch, (channel.name for channel in channels))
                first.append(sse_frame(None, "reset", data))
            first.extend(event.frame for event in opening.backlog)
            # An id with no data moves the client's Last-Event-ID without an event:
            # dropped before any event, it still resumes from here, losing nothing.
            first.append(f"id: {opening.position}\n\n".encode())
            streams.sent(len(opening.backlog))
            yield b"".join(first)
            while True:
                await subscription.wait()
                if subscription.overflowed:
                    streams.overflowed()
                    log.info(
                        "closed a stream of %s that fell %d events behind",
                        client,
                        settings.gateway_client_buffer,
                    )
                    yield b": closed: this stream fell too far behind; resume with Last-Event-ID\n\n"
                    return
                if subscription.closed:
                    return
                events = subscription.take()
                if events:
                    streams.sent(len(events))
                    yield b"".join(event.frame for event in events)
                elif subscription.heartbeat_due:
                    yield HEARTBEAT
                subscription.heartbeat_due = False
        finally:
            if subscription.stalled:
                log.info(
                    "closed a stream of %s: it took nothing for %g s",
                    client,
                    settings.gateway_send_timeout_s,
                )
            gateway.hub.close_stream(subscription)
