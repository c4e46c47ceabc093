"""Book diffs through a real broker: Mosquitto plays the exchange, publishing
the books of the simulated exchange's real order book; SSE and WebSocket
clients in diff mode rebuild every book, and each is the REST snapshot of the
same seq, across a drop and resume, a broker restart, and a slow client's
conflation. The books are rebuilt with the client package's own functions
(an implementation apart from the gateway's)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from coinsuper_gateway_client import GatewayStream
from coinsuper_gateway_client._stream import apply_diff, book_checksum
from httpx_ws import connect_ws

from app.simulator.market import Market
from tests.support import EventStream, wait_for
from tests.test_streams import drain
from tests.world import BOOK_TOPIC, World

pytestmark = pytest.mark.processes

CHANNEL = "orderbook:BTC_USD:0.01"
REST = "/v1/orderbook/BTC_USD?step=0.01&wait=0"


class Exchange:
    """The simulated market's BTC_USD book at 0.01, published through the
    broker; every book the gateway took, as REST answered it, by seq."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.market = Market(seed=7)
        self.now = time.time_ns() // 1_000_000
        self.rest: dict[int, dict[str, Any]] = {}
        self.one_at_a_time: list[int] = []  # the seqs of books published by books()

    def publish(self, ticks: int = 5) -> None:
        for _ in range(ticks):  # half a second of the market between two books, by default
            self.now += 100
            self.market.tick(self.now, 2.0, 0.1)
        self.world.publisher.publish(BOOK_TOPIC, self.market.orderbook("BTC_USD", "0.01", self.now))

    def books(self, gw: Any, n: int) -> None:
        """``n`` books, one at a time: each is answered by REST before the next."""
        for _ in range(n):
            before = self.seq(gw)
            self.publish()
            wait_for(lambda b=before: self.seq(gw) > b, 10, "the gateway to take the book")
            self.one_at_a_time.append(max(self.rest))

    def seq(self, gw: Any) -> int:
        answer = gw.http.get(REST)
        if answer.status_code != 200:
            return 0
        body = answer.json()
        self.rest[body["seq"]] = body["data"]
        return int(body["seq"])


def rebuilt(events: list[tuple[str, dict[str, Any]]]) -> tuple[dict[int, Any], int]:
    """The books a diff-mode client rebuilds from SSE events, by seq (every
    diff checked against its prev_seq and checksum), and how many diffs."""
    held: dict[str, Any] | None = None
    seq, diffs = 0, 0
    out: dict[int, Any] = {}
    for name, body in events:
        if name == "orderbook":
            held, seq = body["data"], body["seq"]
        elif name == "orderbook_diff":
            assert held is not None and body["prev_seq"] == seq, "a diff that does not continue the copy"
            held = apply_diff(held, body["data"])
            assert book_checksum(held) == body["checksum"], "a checksum that does not prove the book"
            seq, diffs = body["seq"], diffs + 1
        else:
            continue
        out[seq] = held
    return out, diffs


def sse_events(stream: EventStream) -> list[tuple[str, dict[str, Any]]]:
    return [(e["event"], json.loads(e["data"])) for e in list(stream.events) if e.get("event")]


class ClientThread:
    """The client package's GatewayStream in diff mode, on a loop of its own:
    the whole books it hands out (it proves each diff)."""

    def __init__(self, base: str, transport: str) -> None:
        self.books: dict[int, Any] = {}
        self.stream = GatewayStream(base, [CHANNEL], transport=transport, books="diff", max_delay=1.0)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        self.task = asyncio.current_task()
        try:
            async with self.stream:
                async for event in self.stream:
                    assert event.event != "orderbook_diff"  # diffs are applied, never handed out
                    if event.event == "orderbook":
                        self.books[event.data["seq"]] = event.data["data"]
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


def ws_events(base: str, subscribe: dict[str, Any], until: int) -> list[tuple[str, dict[str, Any]]]:
    """A WebSocket in diff mode: its events until ``until`` book events came (then it drops)."""
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.Client() as http, connect_ws(f"{base}/v1/ws", http) as ws:
        ws.send_text(json.dumps({"op": "subscribe", "channels": [CHANNEL], "books": "diff", **subscribe}))
        while sum(name.startswith("orderbook") for name, _ in events) < until:
            message = json.loads(ws.receive_text(timeout=10))
            if "event" in message:
                events.append((message["event"], {**message["data"], "id": message["id"]}))
    return events


def stalled_reader(gw: Any, channels: str) -> socket.socket:
    """A client that asks for a stream and reads nothing, not even the head,
    until it is drained (so that the whole response is there to parse)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    request = f"GET /v1/stream?channels={channels} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def dechunk(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a raw chunked response body."""
    body, at = b"", raw.find(b"\r\n\r\n") + 4 if raw.startswith(b"HTTP/") else 0
    while at < len(raw):
        end = raw.find(b"\r\n", at)
        if end < 0:
            break
        size = int(raw[at:end], 16)
        if size == 0:
            break
        body += raw[end + 2 : end + 2 + size]
        at = end + 2 + size + 2
    events = []
    for block in body.split(b"\n\n"):
        name = re.search(rb"^event: (\S+)$", block, re.MULTILINE)
        data = re.search(rb"^data: (.*)$", block, re.MULTILINE)
        if name and data:
            events.append((name.group(1).decode(), json.loads(data.group(1))))
    return events


@pytest.mark.timeout(240)
def test_diff_mode_clients_rebuild_every_book_across_drops_restarts_and_a_slow_read(world: World) -> None:
    gw = world.gateway(GATEWAY_STREAM_WRITE_BUFFER="2048", GATEWAY_STREAM_SEND_BUFFER="4096")
    exchange = Exchange(world)
    try:
        exchange.books(gw, 1)
        url = f"{gw.base}/v1/stream?channels={CHANNEL}&books=diff"
        sse = EventStream(url)
        full = EventStream(f"{gw.base}/v1/stream?channels={CHANNEL}")
        clients = {"sse": ClientThread(gw.base, "sse"), "websocket": ClientThread(gw.base, "websocket")}
        wait_for(lambda: all(c.books for c in clients.values()) and sse.named("orderbook"), 10, "first books")
        exchange.books(gw, 15)

        # A WebSocket in diff mode that drops and resumes with its last id.
        ws_before = ws_events(gw.base, {}, 1)
        exchange.books(gw, 4)
        ws_missed = ws_events(gw.base, {"last_event_id": ws_before[-1][1]["id"]}, 4)
        assert [name for name, _ in ws_missed] == ["orderbook_diff"] * 4  # every missed diff, none whole
        ws_books, _ = rebuilt(ws_before + ws_missed)

        # A drop, and a resume with the last id: the missed diffs are replayed.
        before_drop = sse_events(sse)
        last_id = sse.last_id
        sse.close()
        exchange.books(gw, 8)
        resumed = EventStream(url, headers={"Last-Event-ID": str(last_id)})
        wait_for(lambda: len(resumed.named("orderbook_diff")) >= 8, 10, "the missed diffs")
        assert resumed.named("orderbook") == []  # nothing whole: every missed diff was held

        # The broker restarts: the gateway resubscribes, the channel's seq goes on, diffs too.
        world.mosquitto.kill()
        world.mosquitto.start()
        wait_for(lambda: all(c["link_state"] == "up" for c in gw.channels().values()), 20, "links up again")
        exchange.books(gw, 8)

        # A slow client: it stops reading while 200 books pass (a tenth of a
        # second of the market apart: small diffs), then reads.
        slow = stalled_reader(gw, CHANNEL + "&books=diff")
        start = exchange.seq(gw)
        for _ in range(200):
            exchange.publish(ticks=1)
        wait_for(lambda: exchange.seq(gw) == start + 200, 20, "the 200 books")
        exchange.books(gw, 2)
        final = exchange.seq(gw)

        def resumed_at_the_end() -> bool:
            return max(rebuilt(before_drop + sse_events(resumed))[0]) == final

        wait_for(resumed_at_the_end, 10, "the resumed stream at the end")
        for client in clients.values():
            wait_for(lambda c=client: final in c.books, 15, "the clients at the end")
        raw, _closed = drain(slow, quiet_s=3.0)
        assert raw.startswith(b"HTTP/1.1 200")
        slow.close()

        expected = exchange.rest
        sse_books, sse_diffs = rebuilt(before_drop + sse_events(resumed))
        slow_events = dechunk(raw)
        slow_books, _ = rebuilt(slow_events)
        full_books = {b["seq"]: b["data"] for b in full.named("orderbook")}
        report = {name: len(c.books) for name, c in clients.items()}
        print(f"{len(expected)} books checked against REST; SSE {len(sse_books)} rebuilt from {sse_diffs} diffs; "
              f"client package {report} (mismatches {[c.stream.mismatches for c in clients.values()]}); "
              f"slow client {len(slow_events)} events for {final - 1} books, {len(raw)} bytes")
        assert len(ws_books) == 5
        for books in (sse_books, slow_books, full_books, ws_books, *(c.books for c in clients.values())):
            for seq, data in books.items():
                if seq in expected:
                    assert data == expected[seq], f"seq {seq} is not the REST snapshot of that seq"
        # Every book answered by REST one at a time reached the SSE client, the
        # package's clients (over both transports) and the whole-book stream.
        for books in (sse_books, full_books, *(c.books for c in clients.values())):
            assert set(exchange.one_at_a_time) <= set(books), "a book missing"
        assert all(c.stream.mismatches == 0 for c in clients.values())
        # The slow client was conflated: one diff from its book to a much later one.
        assert slow_books[max(slow_books)] == expected[final]
        assert len(slow_events) < 200
        assert any(body["seq"] - body["prev_seq"] > 1 for name, body in slow_events if name == "orderbook_diff")
        for client in clients.values():
            client.close()
        resumed.close()
        full.close()
    finally:
        gw.stop()


def test_a_bad_book_mode_or_resync_is_a_problem_naming_it(world: World) -> None:
    gw = world.gateway()
    try:
        for query, parameter in (("books=deltas", "books"), ("books=diff&resync=trades:BTC_USD", "resync"),
                                 ("books=diff&resync=orderbook:BTC_USD:0.1", "resync")):
            answer = gw.http.get(f"/v1/stream?channels={CHANNEL},trades:BTC_USD&{query}")
            assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert problem["parameter"] == parameter and "allowed" in problem, problem
        with httpx.Client() as http, connect_ws(f"{gw.base}/v1/ws", http) as ws:
            ws.send_text(json.dumps({"op": "subscribe", "channels": [CHANNEL], "books": {"deep": [1]}}))
            error = json.loads(ws.receive_text(timeout=10))
            assert error["op"] == "error" and error["parameter"] == "books" and error["allowed"] == "full, diff"
            assert "that value" in error["detail"]
    finally:
        gw.stop()
