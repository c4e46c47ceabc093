"""uvicorn's sans-I/O WebSocket protocol, subclassed so that a stream takes the
connection over once the handshake is done: no task and no timers per
WebSocket (the sink that writes to it: :class:`app.http.sinks.WebSocketSink`).

What it reaches into (``tests/test_drift.py`` pins the source): ``run_asgi``
is a copy of uvicorn 0.55's with one condition added (a connection a stream
took is left open); ``send_receive_event_to_app`` reads ``frames``,
``curr_msg_data_type`` and ``conn.close_sent``, and closes with 1007 as
uvicorn does (``conn.send_close``, ``handle_parser_exception``);
``end_stream`` uses ``conn``, ``queue`` and ``close_timer``; ``close_sent`` and ``disconnected``, which
uvicorn assigns, are descriptors here (see
:attr:`GuardedWebSocketProtocol.closed_for_data`).
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.ports import Stream
from app.protocols.http import TakenOver

GRACE_S = 1.0  # what is queued at a close gets this long to go out


class _EndsData:
    """One of uvicorn's flags that end a WebSocket's data (``close_sent``,
    ``disconnected``): set, it also tells the sink (``closed_for_data``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, protocol: GuardedWebSocketProtocol | None, owner: type) -> bool:
        return protocol is not None and bool(getattr(protocol, self.slot, False))

    def __set__(self, protocol: GuardedWebSocketProtocol, value: bool) -> None:
        setattr(protocol, self.slot, value)
        if value and protocol.closed_for_data is not None:
            protocol.closed_for_data()


class GuardedWebSocketProtocol(TakenOver, WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, taken over by a stream once the
    handshake is done (:meth:`take`): its flow control and loss go to the
    stream's subscription, the client's text messages to the stream's op
    handler, synchronously, as they are parsed; and the connection outlives
    the ASGI call that set it up, so that a WebSocket costs no task either."""

    ops: Callable[[str | None], None] | None = None
    # The connection's slot in the HTTP layer's count (:mod:`app.protocols.http`).
    release_slot: Callable[[], None] | None = None
    # Told once no more data may be written (a close sent, the peer gone): the
    # sink, which stops the fan-out's direct writes and its own. The fan-out
    # does not read this object per delivery (at 10,000 WebSockets their
    # attributes are out of cache: docs/performance.md), so ``close_sent``
    # and ``disconnected`` tell the sink wherever uvicorn sets them
    # (:class:`_EndsData`).
    closed_for_data: Callable[[], None] | None = None
    close_sent = _EndsData()
    disconnected = _EndsData()

    def take(self, stream: Stream, ops: Callable[[str | None], None]) -> None:
        self.taken = stream
        self.ops = ops
        # The handshake is over: what only it needed can go.
        self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]

    def send_receive_event_to_app(self) -> None:
        ops = self.ops
        if ops is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        if self.conn.close_sent is not None:
            # websockets has answered a close read in the same bytes. uvicorn
            # writes that answer when it handles the close, after this op; but
            # a ping before the op (ping, text, close in one read) had it write
            # everything queued, the close included, and a reply now would
            # follow the close frame. An op read with a close is not answered.
            self.frames = []
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type != "text":
            ops(None)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            # uvicorn's answer, a close with 1007, without the traceback it
            # logs as an error: a client's bad bytes are not the server's.
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        ops(text)

    async def run_asgi(self) -> None:
        """uvicorn's, except that a connection a stream took is left open."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and self.taken is None:
            self.transport.close()

    def open_for_data(self) -> bool:
        return not (self.close_sent or self.disconnected or self.transport.is_closing())

    def connection_lost(self, exc: Exception | None) -> None:
        taken, self.taken = self.taken, None
        release, self.release_slot = self.release_slot, None
        if release is not None:
            release()
        super().connection_lost(exc)  # disconnected: the sink is told
        self.closed_for_data = None
        if taken is not None:
            taken.lost()

    def end_stream(self, code: int, reason: str, *, at_once: bool) -> None:
        """Close from the server's side."""
        self.taken = None
        self.ops = None
        if at_once or not self.open_for_data():
            self.transport.abort()
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        try:
            self.conn.send_close(code, reason)
        except Exception:
            self.transport.abort()
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.close_timer = self.loop.call_later(GRACE_S, self.transport.abort)
