"""Load generator: N Server-Sent Events clients over raw sockets, in one process.

Each client sends one GET, then reads. It does no JSON work: it finds each
event's `"seq":N,"exchange_ts":T` with one regular expression over what it
read, and records the lag from T (the simulator stamps it with the publish
time) to receipt, and the last seq it saw of its channel. At the end it prints
one JSON object: clients connected, events, lag percentiles, last seq per
channel, clients that ended early.

    python bench/loadgen.py --url http://127.0.0.1:8000 --clients 10000 \\
        --path '/v1/stream?channels={channel}' --channels orderbook:SIM00_USD:0.01,... --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from urllib.parse import urlsplit

EVENT = re.compile(rb'"seq":(\d+),"exchange_ts":(\d+)')


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
        self.lags: list[int] = []
        self.measure = False


async def run_client(host: str, port: int, path: str, client: Client, stats: Stats, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        client.ended = True
        return
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            client.ended = True
            return
        client.connected = True
        carry = b""
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                client.ended = not stop.is_set()
                return
            now = time.time_ns() // 1_000_000
            data = carry + chunk
            cut = data.rfind(b"\n\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 2 :]
            for match in EVENT.finditer(data, 0, cut):
                client.events += 1
                client.last_seq = int(match.group(1))
                if stats.measure:
                    stats.lags.append(now - int(match.group(2)))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        client.ended = not stop.is_set()
    finally:
        writer.close()


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def main(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    channels = args.channels.split(",")
    clients = [Client(channels[i % len(channels)]) for i in range(args.clients)]
    stats = Stats()
    stop = asyncio.Event()
    tasks = []
    started = time.monotonic()
    for index, client in enumerate(clients):
        path = args.path.format(channel=client.channel)
        tasks.append(asyncio.create_task(run_client(host, port, path, client, stats, stop)))
        if index % args.batch == args.batch - 1:
            await asyncio.sleep(args.batch_pause)  # the listen backlog is finite
    deadline = time.monotonic() + 60
    while sum(c.connected or c.ended for c in clients) < len(clients) and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a count)
        await asyncio.sleep(0.2)
    connect_s = time.monotonic() - started
    print(json.dumps({"phase": "connected", "clients": sum(c.connected for c in clients)}), flush=True)
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
        "lag_ms": {
            "p50": percentile(stats.lags, 0.5),
            "p99": percentile(stats.lags, 0.99),
            "max": float(max(stats.lags)) if stats.lags else float("nan"),
        },
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
