"""The cluster's cost: N SSE clients over C order books, first on one gateway
process, then, in the same run, split evenly between two replicas that share
a Redis (one of them the leader, the other following the log), then the same
two replicas on a replicated Redis found through three Sentinels, first with
no WAIT (GATEWAY_REDIS_MIN_REPLICAS=0), then with the leader handing each batch
out once a Redis replica holds it (GATEWAY_REDIS_MIN_REPLICAS=1: a WAIT per
batch, the followers reading the replica), then with no WAIT again; the
figures side by side, so that the WAIT's own cost is told apart from that of
the replicated Redis's extra processes on the same cores, and from the drift
of a machine whose later runs are slower.

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
    priorities,
    start_gateway,
    start_simulator,
    stop_all,
    stop_or_dump,
    wait_until,
)

# Redis runs on machines of its own in a deployment; here it shares two cores
# with 10,000 clients' load generator and the replicas, and a WAIT is two
# wake-ups (the replica's acknowledgement, the master's answer), each of which
# can wait a scheduler's slice behind them. Every Redis process (the single one
# and the replicated ones alike) is started ahead of them in the scheduler
# (`nice -n -10`, as root), so that the figures compare the gateway's work, not
# the scheduler's queue. `--same-priority` leaves them as they are.
REDIS_FIRST = ["nice", "-n", "-10"]


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make test installs Debian's redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen([*REDIS_FIRST, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", workdir],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                      text=True).stdout.strip() == "PONG", 10, "redis-server")
    return process, url


def start_sentinels() -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    """A Redis master, its replica and three Sentinels: the processes, and the
    settings a replica finds the master with."""
    binary, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
    if binary is None or sentinel is None:
        raise SystemExit("redis-server and redis-sentinel are needed (make test installs both)")
    workdir = tempfile.mkdtemp(prefix="bench-sentinel-")
    master, replica = free_port(), free_port()
    processes = []
    for port, extra in ((master, []), (replica, ["--replicaof", "127.0.0.1", str(master)])):
        processes.append(subprocess.Popen(
            [*REDIS_FIRST, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--dbfilename", f"dump-{port}.rdb", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    ports = [free_port() for _ in range(3)]
    for index, port in enumerate(ports):
        config = f"{workdir}/sentinel-{index}.conf"
        with open(config, "w") as handle:
            handle.write(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                         f"sentinel monitor bench 127.0.0.1 {master} 2\n"
                         "sentinel down-after-milliseconds bench 1000\n")
        processes.append(subprocess.Popen([*REDIS_FIRST, sentinel, config], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))

    def info(port: int, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout

    wait_until(lambda: "master_link_status:up" in info(replica, "info", "replication")
               and all("num-other-sentinels\n2" in info(p, "sentinel", "master", "bench") for p in ports),
               30, "the replica and the sentinels")
    env = {"GATEWAY_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in ports),
           "GATEWAY_REDIS_MASTER": "bench", "GATEWAY_REDIS_MIN_REPLICAS": "1"}
    return processes, env


def pair(broker_port: int, channels: list[str], processes: list[subprocess.Popen[bytes]],
         args: argparse.Namespace, label: str, **env: str) -> dict[str, dict[str, Any]]:
    """Two replicas with ``env``, half the clients each: their figures."""
    replicas = []
    for node in ("replica-1", "replica-2"):
        process, base = start_gateway(broker_port, channels, GATEWAY_NODE_ID=node, **env)
        processes.append(process)
        replicas.append((node, base, process))
    wait_until(lambda: sorted(role(base) for _n, base, _p in replicas) == ["follower", "leader"], 30,
               "one leader and one follower")
    targets = [(f"{label}: {node} ({role(base)})", base, ProcessStats(process.pid))
               for node, base, process in replicas]
    result = measure(targets, channels, args)
    for node, _base, process in replicas:
        stop_or_dump(process, f"{label}: {node}")  # one that hangs is dumped, and the run goes on
    return result


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


def by_role(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {("leader" if "(leader)" in name else "follower"): result for name, result in results.items()}


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
    if args.same_priority:
        REDIS_FIRST.clear()
    simulator, broker_port = start_simulator(extra_symbols=args.channels, book_interval=args.interval)
    processes: list[subprocess.Popen[bytes]] = [simulator]
    try:
        single, single_base = start_gateway(broker_port, channels)
        processes.append(single)
        alone = measure([("one process", single_base, ProcessStats(single.pid))], channels, args)
        stop_or_dump(single, "one process")
        redis, url = start_redis()
        processes.append(redis)
        one_redis = pair(broker_port, channels, processes, args, "one Redis", GATEWAY_REDIS_URL=url)
        redis.terminate()
        servers, sentinel_env = start_sentinels()
        processes.extend(servers)
        no_wait = pair(broker_port, channels, processes, args, "Sentinel, no WAIT",
                       **{**sentinel_env, "GATEWAY_REDIS_MIN_REPLICAS": "0"})
        sentinel = pair(broker_port, channels, processes, args, "Sentinel, WAIT 1 replica", **sentinel_env)
        # Once more with no WAIT: a run later in the hour is slower on this
        # machine, so the WAIT is set beside the mean of the runs around it.
        no_wait_again = pair(broker_port, channels, processes, args, "Sentinel, no WAIT, again",
                             **{**sentinel_env, "GATEWAY_REDIS_MIN_REPLICAS": "0"})
        print(f"machine: {machine()}; {priorities()}, and Redis "
              f"{'too' if REDIS_FIRST else 'at the same priority'}")
        print(f"cluster: {args.clients} SSE clients over {args.channels} order books pushed every "
              f"{args.interval} s; measured {args.seconds} s; one process, then two replicas on one Redis "
              f"with half the clients each, then two replicas on a master and a replica found through "
              f"three Sentinels with GATEWAY_REDIS_MIN_REPLICAS=0, then 1, then 0 again")
        everything = {**alone, **one_redis, **no_wait, **sentinel, **no_wait_again}
        for name, result in everything.items():
            print(line(name, result))
        base_p50 = alone["one process"]["fanout_lag_ms"]["p50"]
        for name, result in {**one_redis, **no_wait, **sentinel, **no_wait_again}.items():
            print(f"  {name}: the median fan-out lag is {result['fanout_lag_ms']['p50'] - base_p50:+.1f} ms "
                  f"beside the one process's")
        waited, before, after = by_role(sentinel), by_role(no_wait), by_role(no_wait_again)
        plain = by_role(one_redis)
        for which in ("leader", "follower"):
            for q in ("p50", "p99"):
                around = (before[which]["fanout_lag_ms"][q] + after[which]["fanout_lag_ms"][q]) / 2
                print(f"  the WAIT on the {which}, {q}: {waited[which]['fanout_lag_ms'][q] - around:+.1f} ms "
                      f"beside the mean of the Sentinel runs with no WAIT before and after it; "
                      f"{waited[which]['fanout_lag_ms'][q] - plain[which]['fanout_lag_ms'][q]:+.1f} ms "
                      f"beside one Redis (the first pair)")
        print(json.dumps(everything))
    finally:
        stop_all(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
