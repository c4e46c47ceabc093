"""The connection layer and client input as an attacker would try them, against
a gateway process (app/protocols/http.py; README, "Limits and hardening").

The upstream is a port nothing listens on: these limits must hold whatever the
exchange does, and the routes used here answer without data."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_ws import connect_ws

from app.cli import free_port
from tests.support import EventStream, GatewayProcess, wait_for

SECRET_TOKEN = "sekret-token-1234"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the server sent before it closed the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


def problem_of(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head, head
    return json.loads(body)


def limited_gateway(workdir: Path, header_timeout_s: float) -> GatewayProcess:
    return GatewayProcess(
        workdir,
        {
            "COINSUPER_URL": f"mqtt://127.0.0.1:{free_port()}",
            "GATEWAY_TOKENS": SECRET_TOKEN,
            "GATEWAY_HEADER_TIMEOUT_S": str(header_timeout_s),
            "GATEWAY_MAX_CONNECTIONS": "300",
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "250",
            "GATEWAY_MAX_STREAMS_PER_CLIENT": "3",
            "GATEWAY_HEARTBEAT_S": "1",
            "GATEWAY_WS_OPS_PER_S": "20",
            "GATEWAY_LOG_LEVEL": "debug",
        },
    )


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = limited_gateway(tmp_path_factory.mktemp("limits"), 1.5)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def patient_gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    """The same limits, but a head deadline long enough that the connections
    a flood gets admitted stay admitted while the rest are refused (with 1.5 s,
    on a loaded machine, the first ones time out and make room for more)."""
    process = limited_gateway(tmp_path, 30)
    try:
        yield process
    finally:
        process.stop()


def test_an_endless_header_block_is_cut_off_with_431(gw: GatewayProcess) -> None:
    rss_before = rss_kib(gw.process.pid)
    line = b"X-Big: " + b"A" * 65536 + b"\r\n"
    answers = []
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < 50 * 1024 * 1024:  # 50 MB each, unless the server stops it first
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answers.append((sent, read_response(sock)))
        sock.close()
    rss_after = rss_kib(gw.process.pid)
    for sent, answer in answers:
        assert sent < 50 * 1024 * 1024, "the server took 50 MB of header lines"
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert problem_of(answer)["cap"] == 65536
    assert rss_after - rss_before < 30 * 1024, (rss_before, rss_after)
    print(f"header flood: RSS {rss_before} → {rss_after} KiB; cut after {[s for s, _ in answers]} bytes")


def test_an_endless_request_line_is_cut_off_with_414(gw: GatewayProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"GET /")
    sent = 0
    try:
        while sent < 20 * 1024 * 1024:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = read_response(sock)
    sock.close()
    assert sent < 20 * 1024 * 1024 and answer.startswith(b"HTTP/1.1 414 "), (sent, answer[:80])


def test_a_long_request_line_gets_414_and_a_large_head_431(gw: GatewayProcess) -> None:
    long_url = gw.http.get("/v1/trades/BTC_USD?limit=" + "9" * 9000)
    assert long_url.status_code == 414
    assert long_url.headers["content-type"] == "application/problem+json"
    assert long_url.json()["limit"] == "request line bytes"
    large_head = httpx.get(gw.base + "/healthz", headers={f"x-h{i}": "v" * 1000 for i in range(70)})
    assert large_head.status_code == 431
    assert gw.http.get("/healthz").status_code == 200
    # A huge first header line is a head too large, not a request line too long.
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"A" * 100_000 + b"\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 431 ")


def test_slow_and_idle_connections_are_closed_after_the_head_deadline(gw: GatewayProcess) -> None:
    idle = socket.create_connection(("127.0.0.1", gw.port))
    slow = socket.create_connection(("127.0.0.1", gw.port))
    started = time.monotonic()
    slow.settimeout(0.3)
    answer = b""
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # one byte each 0.3 s: slowloris
        try:
            slow.send(bytes([byte]))
            answer += slow.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer:
            break
    answer += read_response(slow, 5)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert took < 6, took
    assert read_response(idle, 5).startswith(b"HTTP/1.1 408 ")
    idle.close()
    slow.close()


@pytest.mark.processes
def test_a_connection_flood_never_takes_healthz_or_open_streams_down(patient_gw: GatewayProcess) -> None:
    gw = patient_gw
    stream = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD")
    assert stream.status == 200
    fds_before = open_fds(gw.process.pid)
    hostile: list[socket.socket] = []
    refused = 0
    try:
        # 2,000 attempts against a cap of 250 per address and 300 in all.
        for _ in range(2000):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", gw.port))
            hostile.append(sock)
        # Each refusal is waited for, under a generous deadline: on a loaded
        # machine the gateway may take a while to accept them all.
        pending = hostile
        deadline = time.monotonic() + 30
        while pending and refused < 2000 - 250 and time.monotonic() < deadline:
            time.sleep(0.2)
            waiting = []
            for sock in pending:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    waiting.append(sock)
                    continue
                except OSError:
                    refused += 1
                    continue
                refused += data.startswith(b"HTTP/1.1 429 ") or not data
            pending = waiting
        assert refused >= 2000 - 250, refused
        # Another address is not held back by this one's cap.
        with socket.socket() as other:
            other.bind(("127.0.0.2", 0))
            other.connect(("127.0.0.1", gw.port))
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_response(other).startswith(b"HTTP/1.1 200 ")
        beats = len(stream.comments)
        wait_for(lambda: len(stream.comments) > beats, 5, "a heartbeat on the open stream")
        assert not stream.ended
    finally:
        for sock in hostile:
            sock.close()
        stream.close()
    wait_for(lambda: open_fds(gw.process.pid) <= fds_before, 10, "the gateway's descriptors back")
    metrics = gw.http.get("/metrics").text
    assert re.search(r'coinsuper_connections_refused_total\{node="[^"]+",reason="per_address"\}', metrics)


def test_at_the_overall_cap_the_longest_waiting_connection_makes_room(gw: GatewayProcess) -> None:
    hostile = []
    try:
        for index in range(300):  # from many addresses: past no per-address cap
            sock = socket.socket()
            sock.bind((f"127.0.1.{index % 200 + 1}", 0))
            sock.connect(("127.0.0.1", gw.port))
            hostile.append(sock)
        # Every slot is taken by a connection waiting for its head: a probe
        # that sends its request at once still gets in.
        assert gw.http.get("/healthz").status_code == 200
    finally:
        for sock in hostile:
            sock.close()
    assert 'reason="evicted"' in gw.http.get("/metrics").text


def test_made_up_tokens_count_as_the_address(gw: GatewayProcess) -> None:
    streams = [
        EventStream(
            f"{gw.base}/v1/stream?channels=trades:BTC_USD",
            headers={"Authorization": f"Bearer fake-{i}"},
        )
        for i in range(3)
    ]
    try:
        assert all(s.status == 200 for s in streams)
        fourth = gw.http.get(
            "/v1/stream?channels=trades:BTC_USD", headers={"Authorization": "Bearer fake-4"}
        )
        assert fourth.status_code == 429 and fourth.json()["limit"] == "open streams per client"
        # A valid token is a client of its own.
        valid = EventStream(
            f"{gw.base}/v1/stream?channels=trades:BTC_USD",
            headers={"Authorization": f"Bearer {SECRET_TOKEN}"},
        )
        assert valid.status == 200
        valid.close()
    finally:
        for stream in streams:
            stream.close()


def test_x_forwarded_for_is_not_believed_from_an_untrusted_peer(gw: GatewayProcess) -> None:
    streams = [
        EventStream(
            f"{gw.base}/v1/stream?channels=trades:BTC_USD",
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
        )
        for i in range(3)
    ]
    try:
        assert all(s.status == 200 for s in streams)
        spoofed = gw.http.get(
            "/v1/stream?channels=trades:BTC_USD", headers={"X-Forwarded-For": "203.0.113.99"}
        )
        assert spoofed.status_code == 429
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.processes
def test_x_forwarded_for_is_believed_from_a_trusted_proxy(tmp_path: Path) -> None:
    proxied = GatewayProcess(
        tmp_path,
        {
            "COINSUPER_URL": f"mqtt://127.0.0.1:{free_port()}",
            "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
            "GATEWAY_MAX_STREAMS_PER_CLIENT": "1",
        },
    )
    streams = []
    try:
        for i in range(3):  # three clients behind one proxy, one stream each
            stream = EventStream(
                f"{proxied.base}/v1/stream?channels=trades:BTC_USD",
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            )
            streams.append(stream)
            assert stream.status == 200
        again = proxied.http.get(
            "/v1/stream?channels=trades:BTC_USD", headers={"X-Forwarded-For": "203.0.113.0"}
        )
        assert again.status_code == 429
    finally:
        for stream in streams:
            stream.close()
        proxied.stop()


def test_a_percent_encoded_token_never_reaches_the_log(gw: GatewayProcess) -> None:
    encoded = "".join(f"%{b:02X}" for b in SECRET_TOKEN.encode())
    answer = gw.http.get(f"/v1/account/assets?wait=0&access%5Ftoken={encoded}")
    assert answer.status_code in (401, 404, 503)
    stream = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD&access%5Ftoken={encoded}")
    stream.close()
    with connect_ws(f"{gw.base}/v1/ws?access%5Ftoken={encoded}", httpx.Client()) as ws:
        ws.send_text(json.dumps({"op": "subscribe", "channels": ["trades:BTC_USD"]}))
        assert json.loads(ws.receive_text())["op"] == "subscribed"
    time.sleep(0.5)
    log = gw.log_text()
    assert "access%5Ftoken=[redacted]" in log
    for secret in (SECRET_TOKEN, encoded, encoded.lower(), encoded[:30]):
        assert secret not in log


@pytest.mark.parametrize(
    "path",
    [
        "/v1/trades/BTC_USD?limit={n}",
        "/v1/klines/BTC_USD?range={n}",
        "/v1/orderbook/BTC_USD?step=0.01&wait={n}",
        "/v1/kline/BTC_USD?range=1m&wait={n}",
    ],
)
def test_integers_past_pythons_digit_limit_are_a_400(gw: GatewayProcess, path: str) -> None:
    answer = gw.http.get(path.format(n="9" * 5000))
    assert answer.status_code == 400
    assert answer.json()["type"].endswith("/invalid-parameter")
    assert "Traceback" not in gw.log_text()


def test_websocket_binary_deep_json_and_an_op_flood(gw: GatewayProcess) -> None:
    with connect_ws(f"{gw.base}/v1/ws", httpx.Client()) as ws:
        ws.send_bytes(b"\x00\x01binary")
        error = json.loads(ws.receive_text())
        assert error["op"] == "error" and "binary" in error["detail"]
        ws.send_text("[" * 1000 + "]" * 1000)
        assert json.loads(ws.receive_text())["op"] == "error"
        ws.send_text(json.dumps({"op": "subscribe", "channels": ["trades:BTC_USD"]}))
        assert json.loads(ws.receive_text())["op"] == "subscribed"  # the connection stayed
    with connect_ws(f"{gw.base}/v1/ws", httpx.Client()) as ws:
        op = json.dumps({"op": "unsubscribe", "channels": ["trades:BTC_USD"]})
        closed = None
        refused = 0
        for _ in range(2000):
            try:
                ws.send_text(op)
            except Exception:
                break
        try:
            while True:
                reply = json.loads(ws.receive_text(timeout=5))
                refused += reply.get("status") == 429
        except Exception as exc:  # the close that ends the flood
            closed = exc
        assert refused >= 1
        assert closed is not None and "1008" in repr(closed), repr(closed)
    assert gw.http.get("/healthz").status_code == 200
    assert "Traceback" not in gw.log_text()
