"""Getting a stream's bytes to its socket: the sinks of the fan-out.

The fan-out (app/streams/fanout.py) writes each event to every ready client when it is
published. These sinks are where those writes go, one per transport:

- :class:`SseSink`: an SSE response on the gateway's own HTTP protocol
  (app/protocols/http.py). Once the response's head is sent, the protocol hands
  the connection over to the stream (:meth:`GuardedProtocol.hand_over`): the
  request's task returns, and the fan-out writes HTTP chunks of the events'
  SSE frames, each made once per event, straight to the transport. No task and
  no ASGI ``send`` per client or per event.
- :class:`WebSocketSink`: a WebSocket on the gateway's own WebSocket protocol
  (:class:`~app.protocols.websocket.GuardedWebSocketProtocol`, uvicorn's sans-I/O one): the events'
  text frames, made once per event (no per-message compression, so that one
  frame serves every client), written to the transport. The connection's task
  only reads the client's ops.
- :class:`AsgiSink`: an SSE response on any other ASGI server: bytes queued
  and sent by the request's task through ASGI's ``send``. It keeps the route
  working there (and measurable); it is not the fast path.

Both direct sinks hand the fan-out their transport (``direct``): it writes an
event's bytes there itself, while the transport is not closing, and reads
neither the sink nor the protocol per delivery (at 10,000 clients each object
a delivery reads is out of cache). What else goes to a client (the opening,
a catch-up, an acknowledgement, a heartbeat) goes through the sink's
``write``. A WebSocket that may take no more data (a close frame sent, the
peer gone) says so to its stream at once, and the fan-out calls its
``write`` from then on, which writes nothing.

Flow control is the transport's: when its buffer passes the high-water mark
(``GATEWAY_STREAM_WRITE_BUFFER``), the protocol tells the subscription to
pause; when it drains, to resume (the fan-out then catches it up in one write);
when the connection is lost, that it is gone. How a stream ends is the
sink's to say: an overflow closes with word to resume with the last id, a
stalled client is dropped at once, a shutdown ends the response properly.

Why not sse-starlette's ``EventSourceResponse``: it runs an anyio task group of
three tasks per stream (sender, disconnect listener, exit-signal listener) and
a cancel scope per send, which bench/fanout.py measured far heavier per client
than this sink (the figures: README, "Performance").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from starlette.types import Receive, Scope, Send
from websockets.frames import Frame, Opcode

from app.ports import Ending, Event, Feed, Form, Stream, Transport
from app.protocols.http import TRANSPORT, GuardedProtocol
from app.protocols.websocket import GRACE_S, GuardedWebSocketProtocol

HEARTBEAT = b": heartbeat\n\n"
OVERFLOW_NOTE = b": closed: this stream fell too far behind; resume with Last-Event-ID\n\n"
LAST_CHUNK = b"0\r\n\r\n"

PING = Frame(Opcode.PING, b"").serialize(mask=False)
OVERFLOW_CODE = 1013  # "try again later": resume with the last id
SHUTDOWN_CODE = 1012  # "service restart"
STALLED_CODE = 1011

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def sse_chunk(event: Event) -> bytes:
    """The SSE frame of an event, as an HTTP chunk (made once per event)."""
    return chunk(event.frame)


def sse_plain(event: Event) -> bytes:
    """The SSE frame of an event, for a response without chunked encoding."""
    return event.frame


def ws_text(text: str) -> bytes:
    """A server's (unmasked) WebSocket text frame."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def ws_frame(event: Event) -> bytes:
    """The WebSocket frame of an event (made once per event)."""
    return ws_text(event.message)


def bound(transport: Any, send_buffer: int, write_buffer: int) -> None:
    """Bound what one stream's connection may hold: the kernel's send buffer,
    and the transport's queue before the stream counts as paused."""
    transport.set_write_buffer_limits(high=write_buffer)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)


def close(transport: Any, *, at_once: bool) -> None:
    """Close a stream's connection. ``at_once`` drops what is queued; otherwise
    it gets :data:`GRACE_S` to go out before the socket is dropped all the
    same, so that a peer that never reads cannot keep it."""
    if at_once:
        transport.abort()
        return
    if not transport.is_closing():
        transport.close()
    asyncio.get_running_loop().call_later(GRACE_S, transport.abort)


class SseSink:
    """An SSE response's connection, written to directly (see the module doc)."""

    __slots__ = ("direct", "form", "transport", "wrap")
    label = "stream"

    def __init__(self, transport: Any, *, chunked: bool) -> None:
        self.transport = transport
        # The fan-out writes events to it itself (its write is this one's):
        # whatever closes the connection, the transport says it is closing.
        self.direct: Transport | None = transport
        self.form: Form = sse_chunk if chunked else sse_plain
        self.wrap = chunk if chunked else bytes

    def write(self, data: bytes) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.write(data)

    def heartbeat(self) -> None:
        self.write(self.wrap(HEARTBEAT))

    def end(self, ending: Ending) -> None:
        if ending is Ending.STALLED:
            close(self.transport, at_once=True)
            return
        note = self.wrap(OVERFLOW_NOTE) if ending is Ending.OVERFLOW else b""
        self.write(note + (LAST_CHUNK if self.form is sse_chunk else b""))
        close(self.transport, at_once=False)


class AsgiSink:
    """An SSE response on a server that is not the gateway's own: what the
    fan-out writes is queued (bounded by the write buffer, then the stream
    pauses) and sent by the request's task through ASGI's ``send``."""

    label = "stream"
    direct: Transport | None = None  # every write is queued

    def __init__(self, stream: Stream, limit: int) -> None:
        self.form: Form = sse_plain
        self.subscription = stream
        self.limit = limit
        self.queued: list[bytes] = []
        self.size = 0
        self.full = False
        self.ending: Ending | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None

    def write(self, data: bytes) -> None:
        self.queued.append(data)
        self.size += len(data)
        self.wake.set()
        if self.size > self.limit and not self.full:
            self.full = True
            self.subscription.pause()

    def heartbeat(self) -> None:
        self.write(HEARTBEAT)

    def end(self, ending: Ending) -> None:
        if ending is Ending.OVERFLOW:
            self.write(OVERFLOW_NOTE)
        self.ending = ending
        self.wake.set()
        if ending is Ending.STALLED and self.task is not None:
            self.task.cancel()  # its send is blocked: the client stopped reading

    async def run(self, receive: Receive, send: Send) -> None:
        """Send what is queued until the stream ends or the client leaves."""
        self.task = asyncio.current_task()
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if self.queued:
                    data = b"".join(self.queued)
                    self.queued.clear()
                    self.size = 0
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    if self.full:
                        self.full = False
                        self.subscription.resume()
                if self.ending is not None and not self.queued:
                    if self.ending is not Ending.STALLED:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
        except OSError:
            self.subscription.lost()
        except asyncio.CancelledError:
            if self.ending is not Ending.STALLED:
                raise  # the server is stopping this task: not ours to swallow
            self.task.uncancel()  # type: ignore[union-attr]
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.subscription.lost()
        self.ending = self.ending or Ending.GONE
        self.wake.set()


async def run_sse(
    scope: Scope,
    receive: Receive,
    send: Send,
    feed: Feed,
    stream: Stream,
    opening: bytes,
    *,
    send_buffer: int,
    write_buffer: int,
) -> None:
    """Start an SSE response and give its connection to the fan-out."""
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    except BaseException:
        feed.end(stream, Ending.GONE)
        raise
    transport = scope.get(TRANSPORT)
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, GuardedProtocol):
        chunked = protocol.hand_over(stream)
        if chunked is None:  # the client left before its stream began
            feed.end(stream, Ending.GONE)
            return
        bound(transport, send_buffer, write_buffer)
        sink = SseSink(transport, chunked=chunked)
        feed.attach(stream, sink, sink.wrap(opening))
        return  # the request is done; the connection is the fan-out's
    fallback = AsgiSink(stream, write_buffer)
    feed.attach(stream, fallback, opening)
    try:
        await fallback.run(receive, send)
    finally:
        feed.end(stream, Ending.GONE)


class WebSocketSink:
    """A WebSocket's connection, written to directly (see the module doc)."""

    __slots__ = ("direct", "form", "protocol", "stream")
    label = "WebSocket"

    def __init__(self, protocol: GuardedWebSocketProtocol, stream: Stream) -> None:
        self.form: Form = ws_frame
        self.protocol = protocol
        self.stream = stream
        # The transport while data may go to it, for the fan-out's direct
        # writes and this sink's own; None once no more may (a close frame
        # sent, the peer gone: closed_for_data, wherever uvicorn marks it).
        self.direct: Transport | None = protocol.transport if protocol.open_for_data() else None
        protocol.closed_for_data = self._closed

    def _closed(self) -> None:
        self.direct = None
        self.stream.closed_for_data()

    def write(self, data: bytes) -> None:
        transport = self.direct
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def heartbeat(self) -> None:
        """A ping, from the fan-out's tick like an SSE heartbeat: no timer per
        connection. A client that stops reading is found by the send timeout."""
        self.write(PING)

    def end(self, ending: Ending) -> None:
        if ending is Ending.STALLED:
            self.protocol.end_stream(STALLED_CODE, "took nothing for too long", at_once=True)
        elif ending is Ending.OVERFLOW:
            reason = "fell too far behind; resume with last_event_id"
            self.protocol.end_stream(OVERFLOW_CODE, reason, at_once=False)
        else:
            self.protocol.end_stream(SHUTDOWN_CODE, "the gateway is stopping", at_once=False)
