"""The cluster's cost: N SSE clients over C order books, first on one gateway
process, then, in the same run, split evenly between two replicas that share
a Redis (one of them the leader, the other following the log); the figures
side by side.

    .venv/bin/python bench/cluster.py --clients 10000 --channels 20 --interval 0.5

The simulator publishes the books, every gateway follows them (the single
process and the leader from the broker, the follower from Redis), and one
bench/loadgen.py per replica (processes of their own) opens its share of the
clients. Fan-out lag is measured from the event's ``received_ts``, which is
the receiving gateway's clock: on the follower, the leader's receipt, so its
lag holds the Redis hop (the leader's append, the follower's read). Each
replica's CPU and resident memory are sampled as in bench/fanout.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
from common import (
    REPO,
    ProcessStats,
    book_load,
    free_port,
    machine,
    start_gateway,
    start_simulator,
    stop_all,
    wait_until,
)


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make test installs Debian's redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", workdir],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                      text=True).stdout.strip() == "PONG", 10, "redis-server")
    return process, url


def measure(targets: list[tuple[str, str, ProcessStats]], channels: list[str],
            args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One load generator per target, all at once, each with its share of the clients."""
    share = args.clients // len(targets)
    generators = {}
    for name, base, _stats in targets:
        command = [sys.executable, str(REPO / "bench" / "loadgen.py"), "--url", base,
                   "--path", "/v1/stream?channels={channel}", "--channels", ",".join(channels),
                   "--clients", str(share), "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
        generators[name] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    rss_before = {name: stats.rss_kib() for name, _base, stats in targets}
    connected = {}
    for name, process in generators.items():
        assert process.stdout is not None
        connected[name] = json.loads(process.stdout.readline())["clients"]
    time.sleep(2)
    rss_connected = {name: stats.rss_kib() for name, _base, stats in targets}
    time.sleep(max(0.0, args.warmup - 2))
    cpu_start = {name: stats.cpu_seconds() for name, _base, stats in targets}
    wall_start = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for name, process in generators.items():
        assert process.stdout is not None
        results[name] = json.loads(process.stdout.readline())
    wall = time.monotonic() - wall_start
    for name, _base, stats in targets:
        generators[name].wait(30)
        cpu = stats.cpu_seconds() - cpu_start[name]
        results[name].update(
            connected_at_start=connected[name],
            kib_per_client=round((rss_connected[name] - rss_before[name]) / max(1, connected[name]), 1),
            server_cpu_share=round(cpu / wall, 2),
        )
    return results


def role(base: str) -> str:
    return str(httpx.get(base + "/v1/cluster", timeout=10).json()["role"])


def line(name: str, result: dict[str, Any]) -> str:
    fanout, lag = result["fanout_lag_ms"], result["lag_ms"]
    return (f"  {name}: {result['connected_at_start']} clients (ended early {result['ended_early']}), "
            f"{result['kib_per_client']} KiB each, {result['events_per_second']} deliveries/s at "
            f"{result['server_cpu_share']} of a core; fan-out lag p50 {fanout['p50']} ms, "
            f"p99 {fanout['p99']} ms, max {fanout['max']} ms; end to end p50 {lag['p50']} ms, "
            f"p99 {lag['p99']} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args, channels = book_load(parser)
    simulator, broker_port = start_simulator(extra_symbols=args.channels, book_interval=args.interval)
    processes: list[subprocess.Popen[bytes]] = [simulator]
    try:
        single, single_base = start_gateway(broker_port, channels)
        processes.append(single)
        alone = measure([("one process", single_base, ProcessStats(single.pid))], channels, args)
        single.terminate()
        single.wait(30)
        redis, url = start_redis()
        processes.append(redis)
        replicas = []
        for node in ("replica-1", "replica-2"):
            process, base = start_gateway(broker_port, channels, GATEWAY_REDIS_URL=url, GATEWAY_NODE_ID=node)
            processes.append(process)
            replicas.append((node, base, process))
        wait_until(lambda: sorted(role(base) for _n, base, _p in replicas) == ["follower", "leader"], 30,
                   "one leader and one follower")
        targets = [(f"{node} ({role(base)})", base, ProcessStats(process.pid)) for node, base, process in replicas]
        pair = measure(targets, channels, args)
        print(f"machine: {machine()}")
        print(f"cluster: {args.clients} SSE clients over {args.channels} order books pushed every "
              f"{args.interval} s; measured {args.seconds} s; one process, then two replicas on Redis "
              f"with half the clients each")
        for name, result in {**alone, **pair}.items():
            print(line(name, result))
        base_p50 = alone["one process"]["fanout_lag_ms"]["p50"]
        for name, result in pair.items():
            print(f"  {name}: the median fan-out lag is {result['fanout_lag_ms']['p50'] - base_p50:+.1f} ms "
                  f"beside the one process's")
        print(json.dumps({**alone, **pair}))
    finally:
        stop_all(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
