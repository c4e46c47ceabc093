"""Hostile clients against a running gateway, on loopback only, each attack
bounded in count and time; prints the figures of the README's "Limits and
hardening" section.

    python attack.py            # every attack
    python attack.py --only headers,flood

Attacks (the gateway follows the simulator, 20 extra symbols, books every 0.2 s):

- headers: 5 connections each sending up to 200 MB of header lines that never
  end the head; the gateway's resident memory before, at its peak, after.
- flood: 19,500 connection attempts (the machine's file limit is 20,000 for
  this process too) from 39 loopback addresses, left open and silent; /healthz
  probed from another address every 100 ms meanwhile, and an open stream
  watched for events.
- stalled: 80 streams whose clients stop reading, with a send timeout of 5 s;
  the gateway's descriptors and streams before and after.
- nonreading: 1,000 such streams with the default send timeout (30 s), 15 s in:
  the gateway's memory and the kernel send queue of its sockets.
- wsflood: 20,000 ops written at once on one WebSocket; the longest /healthz
  answer meanwhile (the event loop's stall) and how the connection ended.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from common import ProcessStats, machine, start_gateway, start_simulator, wait_until

CHANNELS = [f"orderbook:SIM{i:02d}_USD:0.01" for i in range(20)] + ["trades:BTC_USD"]
STREAM = "/v1/stream?channels=" + ",".join(CHANNELS[:20])


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def send_queue_bytes(port: int) -> int:
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            # The gateway's own sockets (ESTABLISHED), not orphans the kernel finishes.
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                total += int(fields[4].split(":")[0], 16)
    return total


def open_streams(base: str) -> int:
    return int(httpx.get(base + "/v1/channels", timeout=10).json()["open_streams"])


class Sampler:
    """The gateway's resident memory, sampled every 50 ms, for its peak."""

    def __init__(self, pid: int) -> None:
        self.stats = ProcessStats(pid)
        self.peak = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.stats.rss_kib())
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop = True
        self._thread.join()
        return self.peak


def attack_headers(pid: int, port: int) -> None:
    stats = ProcessStats(pid)
    before = stats.rss_kib()
    sampler = Sampler(pid)
    line = b"X-Big: " + b"A" * 65536 + b"\r\n"

    def one() -> tuple[int, bytes]:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < 200 * 1024 * 1024:
                sock.sendall(line)
                sent += len(line)
        except OSError:
            pass
        sock.settimeout(5)
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b""
        sock.close()
        return sent, answer

    results: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(one())) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak = sampler.stop()
    after = stats.rss_kib()
    statuses = sorted({answer.split(b"\r\n", 1)[0].decode(errors="replace") for _, answer in results})
    print(
        f"headers: 5 x up to 200 MB of header lines: RSS {before / 1024:.0f} MB before, "
        f"peak {peak / 1024:.0f} MB, {after / 1024:.0f} MB after; each cut after "
        f"{max(s for s, _ in results) / 1e6:.1f} MB written at most; answers {statuses}"
    )


def attack_flood(pid: int, base: str, port: int) -> None:
    latencies: list[float] = []
    failures = 0
    stop = threading.Event()

    def probe() -> None:
        nonlocal failures
        transport = httpx.HTTPTransport(local_address="127.0.0.250")
        with httpx.Client(transport=transport, timeout=5) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    ok = client.get(base + "/healthz", headers={"Connection": "close"}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.monotonic() - started)
                failures += not ok
                time.sleep(0.1)

    events = 0

    def follow() -> None:
        nonlocal events
        with httpx.stream("GET", base + "/v1/stream?channels=" + CHANNELS[0], timeout=None) as response:
            for line in response.iter_lines():
                events += line.startswith("event:")
                if stop.is_set():
                    return

    prober = threading.Thread(target=probe, daemon=True)
    follower = threading.Thread(target=follow, daemon=True)
    prober.start()
    follower.start()
    time.sleep(1)
    events_before = events
    sockets = []
    refused = 0
    started = time.monotonic()
    for index in range(19_500):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.3.{index % 39 + 1}", 0))
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    took = time.monotonic() - started
    time.sleep(3)
    peak_fds = fds(pid)
    for sock in sockets:
        try:
            sock.recv(1)  # an answer (429 or 503), or the end: refused at once
            refused += 1
        except BlockingIOError:
            pass  # admitted, waiting for a request head
        except OSError:
            refused += 1
    time.sleep(2)
    stop.set()
    events_during = events - events_before
    for sock in sockets:
        sock.close()
    prober.join(10)
    print(
        f"flood: 19,500 silent connections from 39 addresses in {took:.1f} s ({refused} answered "
        f"or closed at once, gateway fds at {peak_fds}); /healthz from another address: "
        f"{len(latencies) - failures}/{len(latencies)} answered, p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"an open stream got {events_during} events meanwhile"
    )


def stalled_clients(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for index in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((f"127.0.4.{index % 250 + 1}", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sockets.append(sock)
    return sockets


def attack_stalled(pid: int, base: str, port: int) -> None:
    fds_before, streams_before = fds(pid), open_streams(base)
    sockets = stalled_clients(port, 80)
    wait_until(lambda: open_streams(base) >= streams_before + 80, 20, "80 streams")
    fds_during, queue_during = fds(pid), send_queue_bytes(port)
    wait_until(lambda: open_streams(base) == streams_before, 60, "the stalled streams closed")
    time.sleep(2)
    print(
        f"stalled: 80 streams that stopped reading (send timeout 5 s): fds {fds_before} → "
        f"{fds_during} → {fds(pid)}, streams {streams_before} → {streams_before + 80} → "
        f"{open_streams(base)}, kernel send queue {queue_during / 1e6:.1f} MB → "
        f"{send_queue_bytes(port) / 1e6:.1f} MB"
    )
    for sock in sockets:
        sock.close()


def attack_nonreading(pid: int, base: str, port: int) -> None:
    stats = ProcessStats(pid)
    before = stats.rss_kib()
    sockets = stalled_clients(port, 1000)
    wait_until(lambda: open_streams(base) >= 1000, 60, "1,000 streams")
    time.sleep(15)
    rss, queue = stats.rss_kib(), send_queue_bytes(port)
    print(
        f"nonreading: 1,000 streams that never read, 15 s in: gateway RSS +{(rss - before) / 1024:.0f} MB, "
        f"kernel send queue {queue / 1e6:.0f} MB: {((rss - before) * 1024 + queue) / 1e6:.0f} MB in all "
        f"({((rss - before) * 1024 + queue) / 1000 / 1000:.0f} KB per client)"
    )
    for sock in sockets:
        sock.close()


def attack_wsflood(base: str) -> None:
    from httpx_ws import aconnect_ws

    async def run() -> tuple[float, str]:
        longest = 0.0
        ended = "open"
        async with httpx.AsyncClient() as client, aconnect_ws(base + "/v1/ws", client) as ws:
            op = '{"op": "unsubscribe", "channels": ["trades:BTC_USD"]}'
            stop = asyncio.Event()

            async def probe() -> None:
                nonlocal longest
                async with httpx.AsyncClient(timeout=10) as other:
                    while not stop.is_set():
                        started = time.monotonic()
                        await other.get(base + "/healthz")
                        longest = max(longest, time.monotonic() - started)
                        await asyncio.sleep(0.02)

            prober = asyncio.create_task(probe())
            await asyncio.sleep(0.3)
            for _ in range(20_000):
                await ws.send_text(op)
            try:
                while True:
                    await ws.receive_text(timeout=5)
            except Exception as exc:
                ended = type(exc).__name__ + (f" {exc}" if str(exc) else "")
            stop.set()
            await prober
        return longest, ended

    longest, ended = asyncio.run(run())
    print(f"wsflood: 20,000 ops at once on one WebSocket: longest /healthz {longest * 1000:.0f} ms; connection: {ended[:80]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="headers,flood,stalled,nonreading,wsflood")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(machine())
    simulator, broker_port = start_simulator(extra_symbols=20, book_interval=0.2)
    try:
        if only & {"headers", "flood", "wsflood", "stalled"}:
            gateway, base = start_gateway(broker_port, CHANNELS, GATEWAY_SEND_TIMEOUT_S="5")
            port = int(base.rsplit(":", 1)[1])
            try:
                if "headers" in only:
                    attack_headers(gateway.pid, port)
                if "stalled" in only:
                    attack_stalled(gateway.pid, base, port)
                if "wsflood" in only:
                    attack_wsflood(base)
                if "flood" in only:
                    attack_flood(gateway.pid, base, port)
            finally:
                gateway.terminate()
                gateway.wait(20)
        if "nonreading" in only:
            gateway, base = start_gateway(broker_port, CHANNELS)
            try:
                attack_nonreading(gateway.pid, base, int(base.rsplit(":", 1)[1]))
            finally:
                gateway.terminate()
                gateway.wait(20)
    finally:
        simulator.terminate()
        simulator.wait(20)


if __name__ == "__main__":
    sys.exit(main())
