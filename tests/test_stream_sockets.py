"""A stream that ends takes its socket with it, and a client that stops reading
costs little: clients that stop reading against a gateway fed through Mosquitto."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.support import GatewayProcess, wait_for
from tests.world import World, start_flowing


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def send_queues(port: int) -> list[int]:
    """Bytes in the kernel send queue of each socket of the server's port."""
    queues = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                queues.append(int(fields[4].split(":")[0], 16))
    return queues


def non_reader(gw: GatewayProcess) -> socket.socket:
    """A client that asks for a trade stream and never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(b"GET /v1/stream?channels=trades:BTC_USD HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def test_stalled_readers_are_closed_with_their_sockets_and_cost_little(world: World) -> None:
    gw = world.gateway(
        GATEWAY_SEND_TIMEOUT_S="3",
        GATEWAY_CLIENT_BUFFER="100000",  # not the overflow: the send timeout ends them
        GATEWAY_STREAM_SEND_BUFFER="16384",
        GATEWAY_STREAM_WRITE_BUFFER="16384",
    )
    try:
        start_flowing(world, gw)
        fds_before = open_fds(gw.process.pid)
        clients = [non_reader(gw) for _ in range(40)]
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 40, 10, "40 streams")
        # Enough trades to fill every client's buffers many times over.
        for _ in range(60):
            world.tape.add(50)
        queues = send_queues(gw.port)
        stuck = [q for q in queues if q > 0]
        # What one non-reading client holds in the kernel: its send buffer
        # (the kernel doubles what is asked), not megabytes.
        assert stuck and max(stuck) <= 2 * 16384 + 4096, max(stuck)
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 0, 20, "streams ended")
        # The sockets went with the streams: the server holds none of them.
        wait_for(lambda: not send_queues(gw.port) or max(send_queues(gw.port)) == 0, 10, "no queue")
        wait_for(lambda: open_fds(gw.process.pid) <= fds_before, 10, "descriptors back")
        for sock in clients:
            sock.settimeout(1)
            try:
                while sock.recv(65536):
                    pass
                ended = True
            except ConnectionResetError:
                ended = True
            except TimeoutError:
                ended = False
            assert ended, "the gateway kept the connection of a stalled stream"
            sock.close()
        metrics = gw.http.get("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("coinsuper_stream_stalled_closes_total"))
        assert float(line.split()[-1]) >= 40
        time.sleep(0.5)
        assert gw.log_text().count("closed a stream of address:127.0.0.1: it took nothing") == 40
    finally:
        gw.stop()


def test_an_overflowing_stream_closes_its_connection(world: World) -> None:
    gw = world.gateway(GATEWAY_CLIENT_BUFFER="20", GATEWAY_SEND_TIMEOUT_S="60")
    try:
        start_flowing(world, gw)
        sock = non_reader(gw)
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 1, 10, "a stream")
        for _ in range(20):
            world.tape.add(50)
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 0, 20, "overflow")
        sock.settimeout(5)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        assert data.startswith(b"HTTP/1.1 200")  # and then the end: the socket was closed
        sock.close()
    finally:
        gw.stop()


def test_a_stream_client_that_sends_endless_bytes_is_dropped(world: World) -> None:
    gw = world.gateway()
    try:
        start_flowing(world, gw)
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(b"GET /v1/stream?channels=trades:BTC_USD HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 1, 10, "a stream")
        # A stream's connection reads nothing more from its client: a little is
        # ignored, more than 64 KiB ends it.
        sock.sendall(b"GET /v1/channels HTTP/1.1\r\nHost: x\r\n\r\n")
        world.tape.add(2)
        time.sleep(0.5)
        assert b"HTTP/1.1" not in sock.recv(65536)  # no answer spliced into the stream
        assert gw.http.get("/v1/channels").json()["open_streams"] == 1
        try:
            for _ in range(40):
                sock.sendall(b"x" * 4096)
        except OSError:
            pass  # dropped while sending: that is the point
        wait_for(lambda: gw.http.get("/v1/channels").json()["open_streams"] == 0, 10, "the stream dropped")
        sock.close()
    finally:
        gw.stop()
