"""``GET /v1/ws``: the same events as ``/v1/stream``, on a WebSocket whose
channels the client adds and drops as it goes.

Client → gateway, text frames of JSON:
``{"op": "subscribe", "channels": [...], "last_event_id": "..."?}`` and
``{"op": "unsubscribe", "channels": [...]}``. Each op is answered:
``{"op": "subscribed", "channels": [...], "reset": bool, "position": id}``,
``{"op": "unsubscribed", "channels": [...]}``, or
``{"op": "error", "type", "title", "status", "detail", ...}`` (the problem
fields of REST); an error never closes the connection.

Gateway → client: ``{"id", "event", "data"}`` frames, each encoded once by
the store for every client. On subscribe, the current snapshots of the new
channels (ids: the current sequence, so ids never go back), or with
``last_event_id`` every missed event once, in order (or ``reset`` first).
Pings come from the server (uvicorn, every ``GATEWAY_HEARTBEAT_S``). A client
whose buffer overflows is closed with code 1013 and resumes with its last id;
one whose socket takes nothing for ``GATEWAY_SEND_TIMEOUT_S`` is dropped.

One fan-out serves both transports: a connection is one
:class:`~app.fanout.Subscription`, whatever its channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.admission import reset_payload
from app.channels import Channel, parse_channel
from app.errors import GatewayError, InvalidInput, TooMany
from app.fanout import Subscription
from app.gateway import Gateway
from app.http.problems import problem_body
from app.http.rest import private_access, tokens_of
from app.http.server import TRANSPORT, bound_stream, end_connection
from app.http.stream import client_key
from app.store import Event

router = APIRouter()
log = logging.getLogger("coinsuper_gateway.ws")

OVERFLOW = 1013  # "try again later": resume with the last id
POLICY = 1008  # "policy violation": ops sent far past the rate


class OpRate:
    """A token bucket: ``rate`` ops a second, bursts of twice that. Ops past
    it are refused with an error frame; ``refused`` counts them since the last
    op allowed, and past a whole burst of them the connection is closed."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate)
        self.tokens = self.burst
        self.last = time.monotonic()
        self.refused = 0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        return False


def _problem(error: GatewayError) -> str:
    return json.dumps({"op": "error", **problem_body(error)})


def _channel_names(message: dict[str, Any]) -> list[Channel]:
    names = message.get("channels")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidInput(
            "channels", "not a list of channel names", "a non-empty list of channel names"
        )
    return list(dict.fromkeys(parse_channel(name) for name in names))


class Connection:
    """One WebSocket client: its subscription and the ops it sends."""

    def __init__(self, gateway: Gateway, websocket: WebSocket, client: str) -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.client = client
        self.subscription = Subscription((), gateway.settings.gateway_client_buffer)
        self.first: list[Event] = []  # what a subscribe sends before anything pending
        self.sending = asyncio.Lock()  # acks and events share the socket

    async def send(self, text: str) -> None:
        async with self.sending:
            await self.websocket.send_text(text)

    def subscribe(self, message: dict[str, Any]) -> str:
        settings = self.gateway.settings
        channels = _channel_names(message)
        last_event_id = message.get("last_event_id")
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise InvalidInput("last_event_id", "not a string", "an event id such as 'a1b2c3d4-42'")
        if any(channel.is_private for channel in channels):
            private_access(self.websocket, allow_query=True)
        total = len(self.subscription.channels | {c.name for c in channels})
        if total > settings.gateway_max_channels_per_stream:
            raise TooMany(
                "channels per stream",
                f"{total} channels would be followed",
                settings.gateway_max_channels_per_stream,
            )
        for channel in channels:
            if not channel.is_private:
                self.gateway.registry.demand(channel)
        backlog, reset = self.gateway.hub.extend_stream(
            self.subscription, channels, last_event_id, restamp=last_event_id is None
        )
        if reset:
            data = reset_payload(self.gateway.hub.epoch, (c.name for c in channels))
            self.first.append(_reset_event(data))
        self.first.extend(backlog)
        self.subscription.wake.set()
        return json.dumps(
            {
                "op": "subscribed",
                "channels": [c.name for c in channels],
                "reset": reset,
                # The client's cursor from here: dropped before any event, it
                # resumes from this position and loses nothing.
                "position": self.gateway.hub.position(),
            }
        )

    def unsubscribe(self, message: dict[str, Any]) -> str:
        channels = _channel_names(message)
        self.gateway.hub.shrink_stream(self.subscription, channels)
        return json.dumps({"op": "unsubscribed", "channels": [c.name for c in channels]})

    def handle(self, text: str | None) -> str:
        if text is None:
            return _problem(InvalidInput("message", "a binary frame", "text frames of JSON"))
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            return _problem(
                InvalidInput("message", "not JSON", '{"op": "subscribe" | "unsubscribe", ...}')
            )
        if not isinstance(message, dict):
            return _problem(
                InvalidInput("message", "not an object", '{"op": ..., "channels": [...]}')
            )
        op = message.get("op")
        try:
            if op == "subscribe":
                return self.subscribe(message)
            if op == "unsubscribe":
                return self.unsubscribe(message)
            raise InvalidInput("op", f"'{str(op)[:20]}' is not an op", "subscribe, unsubscribe")
        except GatewayError as error:
            return _problem(error)

    async def send_events(self) -> None:
        """The writer: pending events to the socket, as the SSE stream does."""
        subscription = self.subscription
        websocket = self.websocket
        gateway = self.gateway
        while True:
            await subscription.wait()
            if subscription.overflowed:
                gateway.streams.overflowed()
                await websocket.close(OVERFLOW, "fell too far behind; resume with last_event_id")
                return
            if subscription.closed:
                return
            events = self.first + subscription.take()
            self.first = []
            subscription.heartbeat_due = False  # pings are the server's
            for event in events:
                subscription.sending_since = time.monotonic()
                await self.send(event.message)
            subscription.sending_since = None
            subscription.last_sent = time.monotonic()
            gateway.streams.sent(len(events))


def _reset_event(data: bytes) -> Event:
    return Event(0, "", "reset", data, event_id=None, conflatable=False, received_ts=0)


@router.websocket("/v1/ws")
async def websocket_stream(websocket: WebSocket) -> None:
    """Follow channels over a WebSocket; see the module documentation."""
    gateway: Gateway = websocket.app.state.gateway
    settings = gateway.settings
    client = client_key(websocket)
    await websocket.accept(subprotocol=None)
    refusal: GatewayError | None = None
    if settings.gateway_require_token:
        try:
            tokens_of(websocket).require(websocket, allow_query=True)
        except GatewayError as error:
            refusal = error
    if refusal is None:
        try:
            gateway.streams.admit(client)
        except GatewayError as error:
            refusal = error
    if refusal is not None:
        await websocket.send_text(_problem(refusal))
        await websocket.close(1008, refusal.title)
        return
    with gateway.streams.opened(client):
        await _session(Connection(gateway, websocket, client))


async def _session(connection: Connection) -> None:
    """One admitted connection, from its first op to its close."""
    gateway, websocket, client = connection.gateway, connection.websocket, connection.client
    settings = gateway.settings
    subscription = connection.subscription
    gateway.hub.extend_stream(subscription, [], None)  # registered: closed with the others
    transport = websocket.scope.get(TRANSPORT)
    if transport is not None:
        bound_stream(
            transport, settings.gateway_stream_send_buffer, settings.gateway_stream_write_buffer
        )
    writer = asyncio.create_task(connection.send_events())
    subscription.sender = writer
    ops = OpRate(settings.gateway_ws_ops_per_s)
    try:
        while True:
            receiving = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receiving, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                receiving.cancel()
                break
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                break
            if ops.allow(time.monotonic()):
                reply = connection.handle(message.get("text"))
            elif ops.refused > ops.burst:
                await websocket.close(POLICY, "too many ops: sustained past the rate")
                break
            else:
                reply = _problem(
                    TooMany(
                        "WebSocket ops per second",
                        "this connection sends ops faster than allowed",
                        int(ops.rate),
                    )
                )
            await connection.send(reply)
            # Queued frames are read without suspending: let the others run.
            await asyncio.sleep(0)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        subscription.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        if subscription.stalled:
            log.info(
                "closed a WebSocket of %s: it took nothing for %g s",
                client,
                settings.gateway_send_timeout_s,
            )
        if transport is not None and (subscription.stalled or subscription.overflowed):
            end_connection(transport, at_once=subscription.stalled)
        gateway.hub.close_stream(subscription)
