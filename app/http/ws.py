"""``GET /v1/ws``: the same events as ``/v1/stream``, on a WebSocket whose
channels the client adds and drops as it goes.

Client → gateway, text frames of JSON:
``{"op": "subscribe", "channels": [...], "last_event_id": "..."?}`` and
``{"op": "unsubscribe", "channels": [...]}``. Each op is answered:
``{"op": "subscribed", "channels": [...], "reset": bool, "position": id}``,
``{"op": "unsubscribed", "channels": [...]}``, or
``{"op": "error", "type", "title", "status", "detail", ...}`` (the problem
fields of REST); an error never closes the connection.

Gateway → client: ``{"id", "event", "data"}`` frames, each made once per
event for every client, written by the fan-out when the event is published
(app/http/sinks.py). On subscribe, the current snapshots of the new channels
(ids: the current sequence, so ids never go back), or with ``last_event_id``
every missed event once, in order (or ``reset`` first), right after the
reply. A ping is sent on a connection idle for ``GATEWAY_HEARTBEAT_S`` (at
most 1.2 times that and a tick). A client that falls too far behind is
closed with code 1013 and resumes with its last id; one whose socket takes
nothing for ``GATEWAY_SEND_TIMEOUT_S`` is dropped.

No task per connection: once the handshake is done the gateway's WebSocket
protocol hands each message to :meth:`Connection.on_message` as it is parsed,
and the ASGI call returns; one fan-out serves both transports.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, WebSocket

from app.domain.channels import Channel, parse_channel
from app.domain.errors import GatewayError, InvalidInput, TooMany
from app.http.problems import problem_body
from app.http.rest import private_access, tokens_of
from app.http.sinks import WebSocketSink, bound, ws_frame, ws_text
from app.http.stream import client_key, diff_mode
from app.ports import Ending, Ports, Stream
from app.protocols.http import TRANSPORT
from app.protocols.websocket import GuardedWebSocketProtocol

router = APIRouter()

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
    """One WebSocket client: its stream, and the ops it sends."""

    def __init__(self, ports: Ports, websocket: WebSocket, stream: Stream) -> None:
        self.ports = ports
        self.stream = stream
        # Judged once, on the handshake's credentials: nothing of the request
        # is kept for the life of the connection.
        self.private_refusal: GatewayError | None = None
        try:
            private_access(websocket, allow_query=True)
        except GatewayError as error:
            # Without its traceback, which would keep the handshake's frames.
            self.private_refusal = error.with_traceback(None)
        self.ops = OpRate(ports.settings.gateway_ws_ops_per_s)
        self.protocol: GuardedWebSocketProtocol | None = None
        self._waits: set[asyncio.Task[None]] = set()  # ops waiting for the log (a cluster)

    def on_message(self, text: str | None) -> None:
        """A message from the client (None: a binary one), as it arrives."""
        ops = self.ops
        if ops.allow(time.monotonic()):
            self.handle(text)
        elif ops.refused > ops.burst:
            self.ports.feed.end(self.stream, Ending.GONE)
            if self.protocol is not None:
                self.protocol.end_stream(
                    POLICY, "too many ops: sustained past the rate", at_once=False
                )
        else:
            refusal = TooMany(
                "WebSocket ops per second",
                "this connection sends ops faster than allowed",
                int(ops.rate),
            )
            self.reply(_problem(refusal))

    def reply(self, text: str, first: bytes = b"") -> None:
        """An op's reply, then what it makes the stream send first."""
        self.ports.feed.write(self.stream, ws_text(text) + first)

    def subscribe(self, message: dict[str, Any], *, waited: bool = False) -> None:
        ports = self.ports
        settings = ports.settings
        feed = ports.feed
        channels = _channel_names(message)
        diffs = diff_mode(message.get("books"))
        last_event_id = message.get("last_event_id")
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise InvalidInput("last_event_id", "not a string", "an event id such as 'a1b2c3d4-42'")
        if not waited and feed.behind(last_event_id):
            # An id from a replica that is ahead: this op is answered once the
            # log is read up to it here (within the first-data wait).
            task = asyncio.get_running_loop().create_task(self._subscribe_later(message))
            self._waits.add(task)
            task.add_done_callback(self._waits.discard)
            return
        if self.private_refusal is not None and any(channel.is_private for channel in channels):
            raise self.private_refusal
        total = len(feed.channels(self.stream) | {c.name for c in channels})
        if total > settings.gateway_max_channels_per_stream:
            raise TooMany(
                "channels per stream",
                f"{total} channels would be followed",
                settings.gateway_max_channels_per_stream,
            )
        for channel in channels:
            if not channel.is_private:
                ports.demand.demand(channel)
        # One synchronous step: the reply, then the backlog, then live events.
        backlog, reset = feed.extend(self.stream, channels, last_event_id, diffs=diffs)
        first = [ws_frame(feed.reset_event(c.name for c in channels))] if reset else []
        first.extend(event.wire(ws_frame) for event in backlog)
        answer = {
            "op": "subscribed",
            "channels": [c.name for c in channels],
            "reset": reset,
            # The client's cursor from here: dropped before any event, it
            # resumes from this position and loses nothing.
            "position": feed.position(),
        }
        self.reply(json.dumps(answer), b"".join(first))

    async def _subscribe_later(self, message: dict[str, Any]) -> None:
        last_event_id = message.get("last_event_id")
        wait_s = self.ports.settings.gateway_wait_default_ms / 1000
        await self.ports.feed.reach(
            last_event_id if isinstance(last_event_id, str) else None, wait_s
        )
        try:
            self.subscribe(message, waited=True)
        except GatewayError as error:
            self.reply(_problem(error))

    def unsubscribe(self, message: dict[str, Any]) -> None:
        channels = _channel_names(message)
        self.ports.feed.shrink(self.stream, channels)
        self.reply(json.dumps({"op": "unsubscribed", "channels": [c.name for c in channels]}))

    def handle(self, text: str | None) -> None:
        if text is None:
            self.reply(_problem(InvalidInput("message", "a binary frame", "text frames of JSON")))
            return
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            self.reply(
                _problem(
                    InvalidInput("message", "not JSON", '{"op": "subscribe" | "unsubscribe", ...}')
                )
            )
            return
        if not isinstance(message, dict):
            self.reply(
                _problem(InvalidInput("message", "not an object", '{"op": ..., "channels": [...]}'))
            )
            return
        op = message.get("op")
        try:
            if op == "subscribe":
                self.subscribe(message)
            elif op == "unsubscribe":
                self.unsubscribe(message)
            else:
                raise InvalidInput("op", f"'{str(op)[:20]}' is not an op", "subscribe, unsubscribe")
        except GatewayError as error:
            self.reply(_problem(error))


@router.websocket("/v1/ws")
async def websocket_stream(websocket: WebSocket) -> None:
    """Follow channels over a WebSocket; see the module documentation."""
    ports: Ports = websocket.app.state.ports
    settings = ports.settings
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
            ports.streams.admit(client)
        except GatewayError as error:
            refusal = error
    transport = websocket.scope.get(TRANSPORT)
    protocol = transport.get_protocol() if transport is not None else None
    if refusal is None and not isinstance(protocol, GuardedWebSocketProtocol):
        refusal = InvalidInput(
            "server", "this server is not the gateway's own", "coinsuper-gateway serve"
        )
    if refusal is not None:
        await websocket.send_text(_problem(refusal))
        await websocket.close(1008, refusal.title)
        return
    assert isinstance(protocol, GuardedWebSocketProtocol)
    feed = ports.feed
    opening = feed.open(client, [], None, settings.gateway_client_buffer)
    stream = opening.stream
    bound(transport, settings.gateway_stream_send_buffer, settings.gateway_stream_write_buffer)
    connection = Connection(ports, websocket, stream)
    protocol.take(stream, connection.on_message)
    sink = WebSocketSink(protocol, stream)
    connection.protocol = protocol
    feed.attach(stream, sink, b"")
    # From here the connection is the stream's: ops are handled as they
    # arrive (Connection.on_message), events written as they are published.
