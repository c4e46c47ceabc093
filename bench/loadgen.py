"""Load generator: N Server-Sent Events or WebSocket clients over raw sockets,
in one process, each from a loopback address of its own (127.1.x.y).

Each client sends one GET (a WebSocket client: the upgrade, then, with
``--subscribe``, one subscribe op for its channel, and a pong for each ping),
then reads in a reader callback of the loop (no task per read). It does no
JSON work: it finds each event's `"seq":N,"exchange_ts":T,"received_ts":R`
with one regular expression over what it read, and records the lag from T
(the simulator stamps it with the publish time) and from R (the server's
receipt) to receipt, twice: to this process's receipt, and to the kernel's
(``SO_TIMESTAMPNS`` on each read), which leaves out this process's own delays
(a read waiting behind the others of the same push, the scheduler) while it
keeps up: a read that takes several events stamps them all with the newest
segment's time, so the kernel's figure is an upper bound. At
the end it prints one JSON object: clients connected, events, lag
percentiles, last seq per channel, clients that ended early.

    python bench/loadgen.py --url http://127.0.0.1:8000 --clients 10000 \\
        --path '/v1/stream?channels={channel}' --channels orderbook:SIM00_USD:0.01,... --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import resource
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

from websockets.frames import Frame, Opcode

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's
# A whole event's head, or a book diff's (which has a prev_seq).
EVENT = re.compile(rb'"seq":(\d+),(?:"prev_seq":\d+,)?"exchange_ts":(\d+),"received_ts":(\d+)')


class Client:
    __slots__ = ("channel", "connected", "ended", "events", "last_seq")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.events = 0
        self.last_seq = 0
        self.ended = False
        self.connected = False


class Stats:
    def __init__(self) -> None:
        self.lags: list[int] = []  # from the exchange's stamp (the simulator's publish)
        self.fanout_lags: list[int] = []  # from the server's receipt of the message
        # The same two, to the kernel's receipt (SO_TIMESTAMPNS) rather than
        # this process's: what the server did, without this process's delays.
        self.kernel_lags: list[int] = []
        self.kernel_fanout_lags: list[int] = []
        self.measure = False
        self.bytes = 0  # read in the measured window, all clients together
        self.unstamped = 0  # reads the kernel gave no timestamp for (their kernel lag is this process's)


def source_address(index: int) -> str:
    return f"127.1.{(index >> 8) & 255}.{(index & 255) or 254}"


def masked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=True)


def frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole (unmasked) server frames in ``data``, and what is left over."""
    out = []
    at = 0
    while len(data) - at >= 2:
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        head = 2
        if length == 126:
            if len(data) - at < 4:
                break
            length, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            if len(data) - at < 10:
                break
            length, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if len(data) - at < head + length:
            break
        out.append((opcode, data[at + head : at + head + length]))
        at += head + length
    return out, data[at:]


def count(client: Client, stats: Stats, payload: bytes, now: int, kernel: int) -> None:
    for match in EVENT.finditer(payload):
        client.events += 1
        client.last_seq = int(match.group(1))
        if stats.measure:
            exchange, received = int(match.group(2)), int(match.group(3))
            stats.lags.append(now - exchange)
            stats.fanout_lags.append(now - received)
            stats.kernel_lags.append(kernel - exchange)
            stats.kernel_fanout_lags.append(kernel - received)


# Room for one SCM_TIMESTAMPNS (a struct timespec) in recvmsg's ancillary data.
STAMP_SPACE = socket.CMSG_SPACE(16)


def kernel_ms(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receipt of what recvmsg read (ms since the epoch), from
    its SCM_TIMESTAMPNS; None when it gave none. For TCP it is the newest
    segment's of the read: a read that takes several events stamps them all
    with the last one's time (an upper bound on each one's lag)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds * 1000 + nanoseconds // 1_000_000
    return None


async def run_client(host: str, port: int, path: str, client: Client, stats: Stats, stop: asyncio.Event,
                     index: int, ws: bool, subscribe: bool, books: dict[str, str]) -> None:
    """One client on a raw non-blocking socket: the request and its answer's
    head through the loop's socket calls, then every read in a reader
    callback (no task wake-up between the read and its stamps), with the
    kernel's receive time of each read."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source_address(index), 0))
        await loop.sock_connect(sock, (host, port))
        if ws:
            request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        else:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        received = b""
        while b"\r\n\r\n" not in received:
            part = await loop.sock_recv(sock, 65536)
            if not part:
                raise ConnectionError("closed before the head")
            received += part
    except OSError:
        client.ended = True
        sock.close()
        return
    head, _, rest = received.partition(b"\r\n\r\n")
    if (b" 101 " if ws else b" 200 ") not in head.split(b"\r\n", 1)[0]:
        client.ended = True
        sock.close()
        return
    if ws and subscribe:
        op = json.dumps({"op": "subscribe", "channels": [client.channel], **books}).encode()
        try:
            await loop.sock_sendall(sock, masked(Opcode.TEXT, op))
        except OSError:
            client.ended = True
            sock.close()
            return
    client.connected = True
    done = loop.create_future()
    carry = b""
    outgoing = bytearray()  # pongs the socket did not take at once

    def end() -> None:
        client.ended = not stop.is_set()
        if not done.done():
            done.set_result(None)

    def flush() -> None:
        try:
            sent = sock.send(outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            end()
            return
        del outgoing[:sent]
        if outgoing:
            loop.add_writer(sock.fileno(), flush)
        else:
            loop.remove_writer(sock.fileno())

    def pong(payload: bytes) -> None:
        waiting = bool(outgoing)
        outgoing.extend(masked(Opcode.PONG, payload))
        if not waiting:
            flush()

    def take(chunk: bytes, now: int, kernel: int) -> bool:
        """What a read brought; False once the stream ended."""
        nonlocal carry
        if stats.measure:
            stats.bytes += len(chunk)
        if not ws:
            data = carry + chunk
            cut = data.rfind(b"\n\n")
            carry = data[cut + 2 :] if cut >= 0 else data
            count(client, stats, data[: max(cut, 0)], now, kernel)
            return True
        whole, carry = frames(carry + chunk)
        for opcode, payload in whole:
            if opcode == 0x9:
                pong(payload)
            elif opcode == 0x8:
                return False
            elif opcode == 0x1:
                count(client, stats, payload, now, kernel)
        return True

    def readable() -> None:
        try:
            chunk, ancillary, _flags, _address = sock.recvmsg(65536, STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk, ancillary = b"", []
        now = time.time_ns() // 1_000_000
        kernel = kernel_ms(ancillary)
        if kernel is None:
            stats.unstamped += 1
            kernel = now
        if not chunk or not take(chunk, now, kernel):
            end()

    try:
        now = time.time_ns() // 1_000_000
        if not rest or take(rest, now, now):
            loop.add_reader(sock.fileno(), readable)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([done, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        else:
            end()
    finally:
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def spread(values: list[int]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (ms)."""
    return {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": float(max(values)) if values else float("nan"),
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    channels = args.channels.split(",")
    clients = [Client(channels[i % len(channels)]) for i in range(args.clients)]
    stats = Stats()
    stop = asyncio.Event()
    books = {"books": "diff"} if args.books == "diff" else {}
    tasks = []
    started = time.monotonic()
    for index, client in enumerate(clients):
        path = args.path.format(channel=client.channel)
        tasks.append(asyncio.create_task(
            run_client(host, port, path, client, stats, stop, index, args.ws, args.subscribe, books)))
        if index % args.batch == args.batch - 1:
            await asyncio.sleep(args.batch_pause)  # the listen backlog is finite
    deadline = time.monotonic() + 60
    while sum(c.connected or c.ended for c in clients) < len(clients) and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a count)
        await asyncio.sleep(0.2)
    connect_s = time.monotonic() - started
    print(json.dumps({"phase": "connected", "clients": sum(c.connected for c in clients)}), flush=True)
    # The instrument's own collector must not stall what it measures: its
    # clients are long-lived, and it makes no cyclic garbage worth a pause.
    gc.collect()
    gc.freeze()
    gc.disable()
    await asyncio.sleep(args.warmup)
    before = sum(c.events for c in clients)
    stats.measure = True
    measured_from = time.monotonic()
    await asyncio.sleep(args.seconds)
    stats.measure = False
    measured = time.monotonic() - measured_from
    events = sum(c.events for c in clients) - before
    last_seq: dict[str, list[int]] = {}
    for client in clients:
        last_seq.setdefault(client.channel, []).append(client.last_seq)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "phase": "done",
        "clients": len(clients),
        "connected": sum(c.connected for c in clients),
        "ended_early": sum(c.ended for c in clients),
        "connect_seconds": round(connect_s, 1),
        "measured_seconds": round(measured, 1),
        "events": events,
        "events_per_second": round(events / measured),
        "bytes_per_client_per_second": round(stats.bytes / measured / max(1, len(clients))),
        "lag_ms": spread(stats.lags),
        "fanout_lag_ms": spread(stats.fanout_lags),
        "unstamped_reads": stats.unstamped,
        "kernel_lag_ms": spread(stats.kernel_lags),
        "kernel_fanout_lag_ms": spread(stats.kernel_fanout_lags),
        "last_seq": {channel: [min(v), max(v)] for channel, v in last_seq.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--path", default="/v1/stream?channels={channel}")
    parser.add_argument("--channels", required=True, help="comma-separated; clients are spread over them")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30, help="measured time")
    parser.add_argument("--warmup", type=float, default=5, help="seconds after connecting, not measured")
    parser.add_argument("--ws", action="store_true", help="WebSocket clients (default: SSE)")
    parser.add_argument("--subscribe", action="store_true", help="a WebSocket client subscribes with an op")
    parser.add_argument("--books", choices=["full", "diff"], default="full",
                        help="the subscribe op's books (SSE: put books=diff in --path)")
    parser.add_argument("--batch", type=int, default=250, help="connections opened at once")
    parser.add_argument("--batch-pause", type=float, default=0.05)
    arguments = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(main(arguments))
    print(json.dumps(result), flush=True)
    sys.exit(0)
