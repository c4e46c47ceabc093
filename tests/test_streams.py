"""Streams that never lose an event: resume, reset, slow clients, caps.

The upstream is Debian's Mosquitto, fed by an independent publisher that plays
the exchange: a tape of distinct trades pushed as rolling "latest 50" windows,
and order books."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.support import EventStream, GatewayProcess, wait_for
from tests.world import CHANNELS, World, start_flowing, trades_of


@pytest.mark.parametrize("via", ["header", "query"])
def test_a_resuming_client_gets_every_missed_event_once_in_order(world: World, via: str) -> None:
    gw = world.gateway()
    try:
        start_flowing(world, gw)
        tape = world.tape
        first = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}")
        wait_for(lambda: first.named("orderbook"), 5, "the book on connect")
        tape.add(3)
        wait_for(lambda: len(trades_of(first)) == 3, 5, "three trades")
        last_id = first.last_id
        first.close()

        # While it is away: trades in several pushes, and two book updates.
        tape.add(4)
        tape.push_book()
        latest_book = tape.push_book()
        tape.add(2)
        tape.add(0)  # a repeated window: nothing new
        wait_for(lambda: gw.http.get("/v1/trades/BTC_USD").json()["seq"] == 14, 5, "the gateway to have them")

        assert last_id is not None
        if via == "header":
            second = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}", headers={"Last-Event-ID": last_id})
        else:
            second = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}&last_event_id={last_id}")
        wait_for(lambda: len(trades_of(second)) == 6, 5, "the six missed trades")
        tape.add(1)
        wait_for(lambda: len(trades_of(second)) == 7, 5, "a live trade after the replay")
        assert second.named("reset") == []
        books = second.named("orderbook")
        assert books and books[-1]["exchange_ts"] == latest_book  # snapshots replay their latest state
        assert len(books) == 1
        assert trades_of(first) + trades_of(second) == tape.as_events(5)  # every trade once, in order
        ids = [int(e["id"].rsplit("-", 1)[1]) for e in first.events + second.events if "id" in e]
        assert ids == sorted(ids) and len(ids) == len(set(ids))
        second.close()
    finally:
        gw.stop()


def test_a_client_the_buffer_has_passed_gets_reset_and_snapshots(world: World) -> None:
    gw = world.gateway(GATEWAY_REPLAY_EVENTS="10")
    try:
        start_flowing(world, gw)
        first = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}")
        wait_for(lambda: first.named("orderbook"), 5, "the book")
        world.tape.add(2)
        wait_for(lambda: len(trades_of(first)) == 2, 5, "two trades")
        last_id = first.last_id
        first.close()
        world.tape.add(30)
        world.tape.push_book()
        wait_for(lambda: gw.http.get("/v1/trades/BTC_USD").json()["seq"] == 37, 5, "the gateway to have them")
        second = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}", headers={"Last-Event-ID": str(last_id)})
        wait_for(lambda: second.named("orderbook"), 5, "fresh snapshots")
        assert second.events[0]["event"] == "reset"
        assert json.loads(second.events[0]["data"])["channels"] == ["trades:BTC_USD", "orderbook:BTC_USD:0.01"]
        assert trades_of(second) == []  # told, never silently short-changed
        second.close()
    finally:
        gw.stop()


def test_an_id_from_before_a_gateway_restart_gets_reset(world: World) -> None:
    from tests.support import free_port

    port = free_port()
    gw = world.gateway(port=port)
    start_flowing(world, gw)
    first = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}")
    wait_for(lambda: first.named("orderbook"), 5, "the book")
    last_id = first.last_id
    assert gw.stop() == 0
    wait_for(lambda: first.ended, 10, "the stream to end with the gateway")
    assert first.error is None  # closed cleanly, not cut
    gw = world.gateway(port=port)
    try:
        world.tape.push_book()
        second = EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}", headers={"Last-Event-ID": str(last_id)})
        wait_for(lambda: second.named("orderbook"), 5, "a fresh book")
        assert second.events[0]["event"] == "reset"
        assert second.last_id is not None and second.last_id.split("-")[0] != str(last_id).split("-")[0]
        second.close()
    finally:
        gw.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stalled_client(gw: GatewayProcess, channels: str) -> socket.socket:
    """A client that asks for a stream, reads its headers, then stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(f"GET /v1/stream?channels={channels} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    sock.settimeout(5)
    assert sock.recv(200).startswith(b"HTTP/1.1 200")
    return sock


def drain(sock: socket.socket, quiet_s: float = 2.0) -> tuple[bytes, bool]:
    """Everything the client can still read; True if the server ended the
    stream (the last chunk of the response, or the connection closed)."""
    sock.settimeout(quiet_s)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            data = b"".join(chunks)
            return data, data.endswith(b"\r\n0\r\n\r\n")
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


class SlowReader:
    """Reads 16 KiB every 20 ms: slower than the burst, but never stuck."""

    def __init__(self, sock: socket.socket) -> None:
        import threading

        self.sock = sock
        self.data = b""
        self.ended = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                chunk = self.sock.recv(16384)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            self.data += chunk
            time.sleep(0.02)
        self.ended = not self._stop

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def test_a_stalled_client_never_slows_the_others(world: World) -> None:
    # A send blocked this long closes a stream: long enough for a slow reader
    # on a machine busy with the burst, short enough for the test. A buffer of
    # 2,000 events: the stalled reader (30,000 trades) overflows it all the
    # same, and the two readers, threads of this busy process, have room to lag
    # (at 200 one overflowed once on a loaded machine).
    gw = world.gateway(GATEWAY_CLIENT_BUFFER="2000", GATEWAY_SEND_TIMEOUT_S="15")
    try:
        start_flowing(world, gw)
        tape = world.tape
        readers = [EventStream(f"{gw.base}/v1/stream?channels={CHANNELS}") for _ in range(2)]
        stalled_trades = stalled_client(gw, "trades:BTC_USD")
        slow_books = SlowReader(stalled_client(gw, "orderbook:BTC_USD:0.01"))
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 4, 5, "four streams")
        rss_before = rss_kib(gw.process.pid)

        start = len(tape.trades)
        started = time.monotonic()
        books = 0
        # 30,000 trades and 12,000 books (25 MB, more than the kernel buffers
        # between the gateway and a stalled reader), as fast as the broker takes them.
        for _ in range(600):
            tape.add(50)
            for _ in range(20):
                tape.push_book()
                books += 1
        expected = tape.as_events(start)
        for reader in readers:
            wait_for(lambda r=reader: len(trades_of(r)) >= len(expected), 120, "every trade at the readers")
        took = time.monotonic() - started
        rss_after = rss_kib(gw.process.pid)
        for reader in readers:
            assert trades_of(reader) == expected  # every trade once, in order, none dropped
            assert not reader.ended
            reader.close()

        # The stalled trade reader was closed; it would resume with Last-Event-ID.
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] <= 3, 60, "the stalled reader closed")
        trade_data, closed = drain(stalled_trades)
        assert closed
        # The slow book reader is conflated, not closed: it catches up on the
        # latest book having been sent far fewer books than were published.
        latest = f'"exchange_ts":{tape.book["timestamp"]}'.encode()
        wait_for(lambda: latest in slow_books.data, 60, "the slow reader to reach the latest book")
        received_books = slow_books.data.count(b"event: orderbook")
        assert not slow_books.ended
        assert 1 <= received_books < books
        how = "overflow" if b"fell too far behind" in trade_data else "send timeout"
        print(f"stalled trade reader closed by {how} after {trade_data.count(b'event: trade')} trades; "
              f"{len(expected)} trades to 2 readers in {took:.1f} s; slow book reader got "
              f"{received_books}/{books} books; RSS {rss_before} → {rss_after} KiB")
        assert rss_after - rss_before < 150 * 1024  # bounded: not the 30,000 events per stalled client
        stalled_trades.close()
        slow_books.close()
    finally:
        gw.stop()


def test_caps_on_streams_per_client_and_overall(world: World) -> None:
    gw = world.gateway(
        GATEWAY_MAX_STREAMS_PER_CLIENT="2", GATEWAY_MAX_STREAMS="3", GATEWAY_TOKENS="abc,def"
    )
    try:
        streams = [EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD") for _ in range(2)]
        third = gw.http.get("/v1/stream?channels=trades:BTC_USD")
        assert third.status_code == 429 and third.json()["limit"] == "open streams per client"
        token_stream = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD&access_token=abc")
        assert token_stream.status == 200  # another client (by its valid token)
        other = gw.http.get("/v1/stream?channels=trades:BTC_USD&access_token=def")
        assert other.status_code == 429 and other.json()["limit"] == "open streams"
        for stream in [*streams, token_stream]:
            stream.close()
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 0, 10, "streams closed")
        again = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD")
        assert again.status == 200
        again.close()
    finally:
        gw.stop()
