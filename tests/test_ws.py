"""The WebSocket endpoint (driven with httpx-ws) and the Python client library,
against a gateway fed by Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from coinsuper_gateway_client import GatewayStream, StreamEvent
from httpx_ws import WebSocketDisconnect, aconnect_ws
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from app.http.sinks import WebSocketSink
from app.ports import Ending
from app.protocols.websocket import GuardedWebSocketProtocol
from app.streams.fanout import Subscription
from tests.support import CuttingProxy, Mosquitto, wait_for
from tests.test_fanout import World as FanoutWorld
from tests.test_fanout import event
from tests.world import CHANNELS, World, start_flowing

BOOK, TRADES = CHANNELS.split(",")[1], CHANNELS.split(",")[0]


class Frames:
    """A WebSocket session in a thread: sends ops, collects every frame."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: int | None = None
        self._outbox: asyncio.Queue[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(base, headers or {})), daemon=True)
        self._thread.start()
        wait_for(lambda: self._outbox is not None, 10, "the WebSocket to open")

    async def _run(self, base: str, headers: dict[str, str]) -> None:
        self._main = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        with contextlib.suppress(asyncio.CancelledError):  # closed by the test: the thread ends quietly
            await self._session(base, headers)

    async def _session(self, base: str, headers: dict[str, str]) -> None:
        assert self._outbox is not None
        async with httpx.AsyncClient(headers=headers) as http, aconnect_ws(base + "/v1/ws", http) as ws:

            async def sender() -> None:
                assert self._outbox is not None
                while True:
                    await ws.send_text(await self._outbox.get())

            task = asyncio.create_task(sender())
            try:
                while True:
                    self.frames.append(json.loads(await ws.receive_text()))
            except WebSocketDisconnect as exc:
                self.closed = exc.code
            finally:
                task.cancel()

    def send(self, message: Any) -> None:
        assert self._loop is not None and self._outbox is not None
        text = message if isinstance(message, str) else json.dumps(message)
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, text)

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [f for f in list(self.frames) if f.get("op") == op]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for f in list(self.frames) if f.get("event") == name]

    def last_id(self) -> str:
        return [f["id"] for f in list(self.frames) if f.get("id")][-1]

    def close(self) -> None:
        if self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join(5)


def trade_data(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["data"]["data"] for f in frames]


def test_subscribe_unsubscribe_resume_and_errors(world: World) -> None:
    gw = world.gateway()
    try:
        start_flowing(world, gw)
        tape = world.tape
        ws = Frames(gw.base)
        ws.send({"op": "subscribe", "channels": [BOOK, TRADES]})
        wait_for(lambda: ws.ops("subscribed"), 5, "the acknowledgement")
        ack = ws.ops("subscribed")[0]
        assert ack["channels"] == [BOOK, TRADES] and ack["reset"] is False and ack["position"].count("-") == 1
        wait_for(lambda: ws.events("orderbook"), 5, "the book's snapshot")
        tape.add(3)
        wait_for(lambda: len(ws.events("trade")) == 3, 5, "three trade frames")
        assert trade_data(ws.events("trade")) == tape.as_events(5, 8)
        frame = ws.events("trade")[0]
        assert set(frame) == {"id", "event", "data"} and frame["data"]["channel"] == TRADES

        ws.send({"op": "unsubscribe", "channels": [TRADES]})
        wait_for(lambda: ws.ops("unsubscribed"), 5, "the acknowledgement")
        tape.add(2)
        books = len(ws.events("orderbook"))
        tape.push_book()
        wait_for(lambda: len(ws.events("orderbook")) > books, 5, "books still coming")
        assert len(ws.events("trade")) == 3  # none since the unsubscribe

        # Bad ops get an error frame with the problem fields; the connection stays.
        for bad in ("not json", {"op": "dance"}, {"op": "subscribe", "channels": ["candles:BTC_USD"]},
                    {"op": "subscribe", "channels": "trades:BTC_USD"}, {"op": "subscribe", "channels": ["fills"]}):
            ws.send(bad)
        wait_for(lambda: len(ws.ops("error")) == 5, 5, "five error frames")
        errors = ws.ops("error")
        assert [e["status"] for e in errors] == [400, 400, 400, 400, 404]
        assert all({"type", "title", "detail"} <= e.keys() for e in errors)
        assert "subscribe, unsubscribe" in errors[1]["detail"] and "orderbook" in errors[2]["detail"]
        last_id = ws.last_id()
        ws.close()

        # Missed while away: resumed with last_event_id, each once, in order.
        # (The two trades made while trades were unsubscribed lie before the
        # last id: not missed, not sent.)
        tape.add(4)
        tape.add(1)
        again = Frames(gw.base)
        again.send({"op": "subscribe", "channels": [TRADES], "last_event_id": last_id})
        wait_for(lambda: len(again.events("trade")) == 5, 5, "the five missed trades")
        assert trade_data(again.events("trade")) == tape.as_events(10)
        again.close()
    finally:
        gw.stop()


class Follower:
    """The client library in a thread of its own, collecting what it yields."""

    def __init__(self, stream: GatewayStream) -> None:
        self.stream = stream
        self.events: list[StreamEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            async for event in self.stream:
                self.events.append(event)
        except asyncio.CancelledError:
            pass

    def trades(self) -> list[dict[str, Any]]:
        return [e.data["data"] for e in list(self.events) if e.event == "trade"]

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_the_client_resumes_by_itself_through_drops_and_a_broker_restart(
    world: World, mosquitto: Mosquitto, transport: str
) -> None:
    gw = world.gateway(GATEWAY_STALE_FACTOR="1000")
    # The client reaches the gateway through a relay that drops its connections.
    proxy = CuttingProxy(gw.port)
    try:
        start_flowing(world, gw)
        tape = world.tape
        base = f"http://127.0.0.1:{proxy.port}"
        follower = Follower(GatewayStream(base, [TRADES], transport=transport, first_delay=0.1))  # type: ignore[arg-type]
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 1, 10, "the client connected")
        start = len(tape.trades)
        tape.add(30)
        wait_for(lambda: len(follower.trades()) == 30, 20, "the first 30 trades")
        proxy.cut()  # dropped: the trades of the next pushes are missed meanwhile
        for _ in range(2):
            tape.add(30)
        wait_for(lambda: len(follower.trades()) == 90, 20, "the first 90 trades, after a drop")
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 1, 10, "one stream")

        mosquitto.kill()
        wait_for(lambda: gw.channels()[TRADES]["link_state"] != "up", 10, "the link down")
        mosquitto.start()
        world.publisher.client.reconnect()
        wait_for(lambda: gw.channels()[TRADES]["link_state"] == "up", 15, "the link up again")
        for _ in range(3):
            tape.add(30)
        tape.add(5)
        wait_for(lambda: len(follower.trades()) == 185, 30, "every trade")
        assert follower.trades() == tape.as_events(start)  # every distinct trade once, in order
        assert follower.stream.reconnects >= 1  # it was dropped, and came back by itself
        assert [e for e in follower.events if e.event == "reset"] == []
        follower.stop()
    finally:
        proxy.close()
        gw.stop()


def test_an_idle_websocket_is_pinged(world: World) -> None:
    gw = world.gateway(GATEWAY_HEARTBEAT_S="1")
    try:
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        started = time.monotonic()
        while len(rest) < 2:
            rest += sock.recv(4096)
        assert rest[0] == 0x89  # a ping, unasked, within the heartbeat and a tick
        assert time.monotonic() - started < 4
        sock.close()
    finally:
        gw.stop()


class _Stream:
    """A stream's handle that records whether its sink said it is gone."""

    def __init__(self) -> None:
        self.gone = 0
        self.closed_to_data = 0

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def lost(self) -> None:
        self.gone += 1

    def closed_for_data(self) -> None:
        self.closed_to_data += 1


class _Transport:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def _taken_over(transport: _Transport) -> GuardedWebSocketProtocol:
    """A WebSocket protocol past its handshake, with no server around it."""
    protocol = GuardedWebSocketProtocol.__new__(GuardedWebSocketProtocol)
    protocol.transport = transport  # type: ignore[assignment]
    return protocol


@pytest.mark.parametrize("state", ["close_sent", "disconnected"])
def test_a_websocket_sink_stops_writing_once_uvicorn_marks_its_protocol_closed(state: str) -> None:
    """The fan-out reads neither the protocol nor the sink for a delivery:
    uvicorn's own assignments (``self.close_sent = True``, ``self.disconnected
    = True``), wherever uvicorn makes them, must tell the stream at once
    (``closed_for_data``), which does not end it."""
    transport = _Transport()
    protocol = _taken_over(transport)
    stream = _Stream()
    sink = WebSocketSink(protocol, stream)
    assert sink.direct is transport
    sink.write(b"first")
    setattr(protocol, state, True)  # as uvicorn's code does
    sink.write(b"second")
    sink.heartbeat()
    assert transport.written == [b"first"]
    assert not protocol.open_for_data()
    assert sink.direct is None and stream.closed_to_data == 1 and stream.gone == 0


def test_a_websocket_sink_does_not_write_to_a_closing_transport() -> None:
    transport = _Transport()
    sink = WebSocketSink(_taken_over(transport), _Stream())
    transport.closing = True
    sink.write(b"late")
    assert transport.written == []


def _followed_on_a_websocket() -> tuple[FanoutWorld, Subscription, GuardedWebSocketProtocol, _Transport]:
    """A fan-out with one stream of trades, attached to a WebSocket's sink."""
    world = FanoutWorld()
    sub = world.fanout.subscribe("address:a", 10)
    world.fanout.retarget(sub, frozenset({"trades:BTC_USD"}))
    transport = _Transport()
    protocol = _taken_over(transport)
    world.fanout.attach(sub, WebSocketSink(protocol, sub), b"")
    return world, sub, protocol, transport


def test_the_fan_out_writes_no_event_after_a_websocket_close_frame() -> None:
    """uvicorn marks ``close_sent`` and closes the transport after (a protocol
    error): no event may go out in between, and the stream is left to end
    as it would (its close, or the send timeout for a client that reads
    nothing), not ended there."""
    world, sub, protocol, transport = _followed_on_a_websocket()
    world.publish(event(1))
    assert len(transport.written) == 1
    protocol.close_sent = True  # as uvicorn does, before its transport.close()
    world.publish(event(2))
    assert len(transport.written) == 1
    assert sub.ended is None and sub.direct is None


@pytest.mark.parametrize("paused", [True, False])
def test_a_websocket_past_its_close_frame_is_dropped_at_the_send_timeout(paused: bool) -> None:
    """uvicorn's close on a protocol error waits for the buffer to drain: a
    client that reads nothing, whether or not its buffer filled, is still
    dropped (aborted) at the send timeout."""
    world, sub, protocol, transport = _followed_on_a_websocket()
    if paused:
        sub.pause()  # its client stopped reading and the buffer filled
    protocol.close_sent = True  # then it sent a frame too big
    assert sub.paused_at is not None
    world.fanout.tick(sub.paused_at + 11, heartbeat_s=15)
    assert sub.ended is Ending.STALLED and transport.aborted
    assert world.streams.stalled_closes == 1


def _client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


@pytest.mark.parametrize("closed", [True, False])
def test_an_op_read_with_a_ping_and_the_clients_close_is_not_answered_after_the_close_frame(
    closed: bool,
) -> None:
    """Ping, text and close in one read: websockets queues its pong and its
    close reply as it parses; uvicorn writes both when it handles the ping,
    before the text: the op's reply would follow the close frame."""
    transport = _Transport()
    protocol = _taken_over(transport)
    protocol.conn = ServerProtocol(state=State.OPEN)  # past its handshake
    protocol.handshake_initiated = True
    protocol.close_timer = None
    protocol.queue = asyncio.Queue()
    protocol.ops = lambda text: transport.write(b"REPLY")
    data = _client_frame(Opcode.PING, b"") + _client_frame(Opcode.TEXT, b"{}")
    if closed:
        data += _client_frame(Opcode.CLOSE, Close(1000, "").serialize())
    protocol.data_received(data)
    written = b"".join(transport.written)
    if closed:
        assert b"REPLY" not in written and written.startswith(b"\x8a\x00\x88")  # the pong, the close
    else:
        assert written.endswith(b"REPLY")


def test_bad_utf_8_from_a_client_closes_with_1007_and_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    transport = _Transport()
    protocol = _taken_over(transport)
    protocol.conn = ServerProtocol(state=State.OPEN)
    protocol.queue = asyncio.Queue()
    protocol.logger = logging.getLogger("uvicorn.error")
    received: list[str | None] = []
    protocol.ops = received.append
    with caplog.at_level(logging.INFO):
        protocol.data_received(_client_frame(Opcode.TEXT, b"\xff\xfe"))
    assert received == []
    assert b"".join(transport.written) == Frame(Opcode.CLOSE, Close(1007, "").serialize()).serialize(mask=False)
    assert transport.closing and protocol.close_sent
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
