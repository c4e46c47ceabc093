"""``GET /v1/stream``: Server-Sent Events over any number of channels.

Each event's frame was encoded once by the store; this module only decides
which frames a stream gets and when. A stream starts with the current
snapshots (or, resuming, with what it missed), then takes what the fan-out put
in its buffer whenever it is woken, and sends a heartbeat comment when nothing
else was sent for the heartbeat interval.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse

from app.channels import Channel, parse_channel_list
from app.errors import TooMany
from app.gateway import Gateway
from app.http.rest import GatewayDep, private_access, tokens_of
from app.hub import Opening

router = APIRouter()

HEARTBEAT = b": heartbeat\n\n"


@router.get(
    "/v1/stream",
    tags=["streams"],
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event stream"}},
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
) -> EventSourceResponse:
    """Follow channels as Server-Sent Events (see API.md for events and ids)."""
    settings = gateway.settings
    wanted = parse_channel_list(channels or "", cap=settings.gateway_max_channels_per_stream)
    if any(channel.is_private for channel in wanted):
        private_access(request, allow_query=True)
    elif settings.gateway_require_token:
        tokens_of(request).require(request, allow_query=True)
    if gateway.open_streams >= settings.gateway_max_streams:
        raise TooMany(
            "open streams",
            "the gateway has as many streams as it serves",
            settings.gateway_max_streams,
        )
    for channel in wanted:
        if not channel.is_private:
            gateway.registry.demand(channel)
    resume_from = request.headers.get("last-event-id") or last_event_id
    opening = gateway.hub.open_stream(wanted, resume_from, settings.gateway_client_buffer)
    return EventSourceResponse(
        _events(gateway, wanted, opening),
        ping=0,  # heartbeats are sent by _events, only when the stream is idle
        headers={"Cache-Control": "no-cache"},
    )


async def _events(
    gateway: Gateway, channels: list[Channel], opening: Opening
) -> AsyncIterator[bytes]:
    settings = gateway.settings
    subscription = opening.subscription
    gateway.open_streams += 1
    try:
        first = [f"retry: {settings.gateway_retry_ms}\n\n".encode()]
        if opening.reset:
            reason = {
                "reason": "cannot resume from the given id",
                "epoch": gateway.hub.epoch,
                "channels": [channel.name for channel in channels],
            }
            first.append(b"event: reset\ndata: " + json.dumps(reason).encode() + b"\n\n")
        first.extend(event.frame for event in opening.backlog)
        yield b"".join(first)
        while True:
            woken = await subscription.wait(settings.gateway_heartbeat_s)
            if subscription.overflowed:
                yield b": closed: this stream fell too far behind; resume with Last-Event-ID\n\n"
                return
            if subscription.closed:
                return
            if not woken:
                yield HEARTBEAT
                continue
            events = subscription.take()
            if events:
                yield b"".join(event.frame for event in events)
    finally:
        gateway.hub.close_stream(subscription)
        gateway.open_streams -= 1
