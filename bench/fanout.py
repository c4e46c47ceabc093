"""Fan-out: N SSE (or WebSocket) clients spread over C order-book channels
pushed every I seconds, against the gateway and then, in the same run, against
nginx + nchan fed the same events; the figures side by side, with ratios.

    .venv/bin/python bench/fanout.py --clients 10000 --channels 20 --interval 0.5
    .venv/bin/python bench/fanout.py --transport ws ...          # WebSocket clients
    .venv/bin/python bench/fanout.py --interval 0.1667 ...       # 6 pushes/s
    .venv/bin/python bench/fanout.py --pattern burst ...         # every book stamped at once
    .venv/bin/python bench/fanout.py --runs 5 ...                # five runs (the order turns), p99 run by run
    .venv/bin/python bench/fanout.py --no-discarded-pass ...     # without the discarded pass before run 1
    .venv/bin/python bench/fanout.py --target gateway ...        # one side only
    .venv/bin/python bench/fanout.py --books diff ...            # the gateway's diffs beside its full books

With ``--books diff`` the gateway is measured three times in the run, whole
books, then diffs (``books=diff``), then whole books again (diffs are set
beside the mean of the two whole-book runs), with the simulator's market busy
enough that each push changes about as much of a book as the default market
does between two of the exchange's pushes (1–2 s apart); bytes per client per
second side by side.

Every measurement runs on processes of its own: a fresh simulator (the same
seed: the same market) and a fresh gateway. The simulator publishes the books
(each stamped when it is made, just before it is published), the gateway follows them, and
bench/loadgen.py (a process of its own) opens the clients and reports
deliveries, lag from publish to receipt, and clients that ended early. This
driver samples the server's CPU and resident memory (before the clients,
after they connected, during the measured window) and the simulator's and the
load generator's CPU, and prints the figures with the machine they ran on.
For nchan and the floor, a bridge reads a fresh gateway's stream of the same
channels and publishes each event, as is, to the server's publisher location;
the clients then read that server, so its end to end lag includes the
gateway's hop and the bridge's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
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
    start_nginx,
    start_simulator,
    stop_all,
    wait_until,
)

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NCHAN_LOCATIONS = r"""
    location ~ ^/pub/(\w+)$ { nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 20; }
    location ~ ^/sub/(\w+)$ { nchan_subscriber eventsource websocket; nchan_channel_id $1; }
"""


RECEIVED = re.compile(rb'"received_ts":\d+')


def nchan_id(channel: str) -> str:
    return channel.replace(":", "_").replace(".", "_")


def start_nchan(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    if not Path(NCHAN_MODULE).exists():
        raise SystemExit("nchan is not installed: apt-get install nginx libnginx-mod-nchan")
    return start_nginx(
        workdir, server=NCHAN_LOCATIONS, modules=f"load_module {NCHAN_MODULE};",
        ready=lambda base: httpx.post(base + "/pub/probe", content=b"x").status_code in (200, 201, 202),
    )


def nchan_worker(master: subprocess.Popen[bytes]) -> int:
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    return int(children[0]) if children else master.pid


def bridge(gateway: str, nchan: str, channels: list[str], stop: threading.Event) -> None:
    """Reads the gateway's stream of every channel; publishes each event's data to nchan."""

    async def run() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http:
            url = f"{gateway}/v1/stream?channels={','.join(channels)}"
            async with http.stream("GET", url) as response:
                event: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if stop.is_set():
                        return
                    if line:
                        key, _, value = line.partition(":")
                        event[key] = value.removeprefix(" ")
                        continue
                    if event.get("event") == "orderbook":
                        channel = json.loads(event["data"])["channel"]
                        # nchan's receipt is this post: the fan-out lag is measured from it.
                        stamp = b'"received_ts":%d' % (time.time_ns() // 1_000_000)
                        data = RECEIVED.sub(stamp, event["data"].encode(), count=1)
                        # One post at a time, each after nchan answered the last: an event
                        # that comes while nchan fans out another is stamped once nchan is
                        # free, as the gateway stamps an event once its loop is free (its
                        # link reads the next message after the last one's fan-out). Posting
                        # at once instead put nchan's p50 at 21 ms against 4 (2026-12-07).
                        await http.post(f"{nchan}/pub/{nchan_id(channel)}", content=data)
                    event = {}

    try:
        asyncio.run(run())
    except httpx.HTTPError:
        if not stop.is_set():
            raise  # the gateway ending at the end of the run is no error


def gc_counts(base: str) -> dict[str, float]:
    """The gateway's garbage collections so far, by generation (from /metrics)."""
    counts: dict[str, float] = {}
    try:
        text = httpx.get(base + "/metrics", timeout=30).text
    except httpx.HTTPError:  # a server saturated by the load: no figures, not a failed run
        return counts
    for line in text.splitlines():
        if line.startswith("coinsuper_gc_collections_total"):
            counts[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("coinsuper_gc_pause_seconds_total"):
            counts[line.split('"')[1] + "_s"] = float(line.split()[-1])
    return counts


def run_loadgen(base: str, path: str, channels: list[str], args: argparse.Namespace,
                server: ProcessStats, *, ws: bool, subscribe: bool, gc_of: str | None = None,
                books: str = "full") -> dict[str, Any]:
    command = [sys.executable, str(REPO / "bench" / "loadgen.py"), "--url", base, "--path", path,
               "--channels", ",".join(channels), "--clients", str(args.clients),
               "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--books", books]
    command += ["--ws"] if ws else []
    command += ["--subscribe"] if subscribe else []
    rss_before = server.rss_kib()
    loadgen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert loadgen.stdout is not None
    try:
        connected = json.loads(loadgen.stdout.readline())
        time.sleep(2)
        rss_connected = server.rss_kib()
        time.sleep(max(0.0, args.warmup - 2))
        generator = ProcessStats(loadgen.pid)
        gc_before = gc_counts(gc_of) if gc_of else {}
        cpu_start, wall_start, generator_start = server.cpu_seconds(), time.monotonic(), generator.cpu_seconds()
        simulator_start = args.simulator.cpu_seconds()
        result: dict[str, Any] = json.loads(loadgen.stdout.readline())
        cpu = server.cpu_seconds() - cpu_start
        generator_cpu = generator.cpu_seconds() - generator_start
        simulator_cpu = args.simulator.cpu_seconds() - simulator_start
        if gc_of:
            after = gc_counts(gc_of)
            result["gc_in_window"] = {key: round(after[key] - gc_before[key], 3) for key in after if key in gc_before}
        wall = time.monotonic() - wall_start
        loadgen.wait(30)
    finally:
        if loadgen.poll() is None:  # the run failed: its 10,000 clients go with it
            loadgen.kill()
            loadgen.wait(30)
    result.update(
        connected_at_start=connected["clients"],
        rss_before_kib=rss_before,
        rss_connected_kib=rss_connected,
        kib_per_client=round((rss_connected - rss_before) / max(1, connected["clients"]), 1),
        server_cpu_share=round(cpu / wall, 2),
        loadgen_cpu_share=round(generator_cpu / wall, 2),
        simulator_cpu_share=round(simulator_cpu / wall, 2),
        deliveries_per_core_second=round(result["events_per_second"] / max(cpu / wall, 0.01)),
    )
    return result


def report(name: str, result: dict[str, Any], final: dict[str, int]) -> None:
    print(f"  {name}: connected {result['connected_at_start']} (in {result['connect_seconds']} s), "
          f"ended early {result['ended_early']}; {result['kib_per_client']} KiB per client "
          f"({result['rss_before_kib']} → {result['rss_connected_kib']} KiB)")
    print(f"    {result['bytes_per_client_per_second']} bytes per client per second; "
          f"deliveries {result['events_per_second']}/s at {result['server_cpu_share']} of a core: "
          f"{result['deliveries_per_core_second']} per core-second (load generator at "
          f"{result['loadgen_cpu_share']} of a core, the simulated exchange at {result['simulator_cpu_share']})")
    print(f"    fan-out lag (server's receipt → client): p50 {result['fanout_lag_ms']['p50']} ms, "
          f"p99 {result['fanout_lag_ms']['p99']} ms, max {result['fanout_lag_ms']['max']} ms; end to end "
          f"(exchange → client): p50 {result['lag_ms']['p50']} ms, p99 {result['lag_ms']['p99']} ms")
    print(f"    to the client's kernel (SO_TIMESTAMPNS, without the load generator's own delays): fan-out "
          f"p50 {result['kernel_fanout_lag_ms']['p50']} ms, p99 {result['kernel_fanout_lag_ms']['p99']} ms, "
          f"max {result['kernel_fanout_lag_ms']['max']} ms; end to end p50 {result['kernel_lag_ms']['p50']} ms, "
          f"p99 {result['kernel_lag_ms']['p99']} ms"
          + (f" ({result['unstamped_reads']} reads had no kernel stamp: their own receipt counted)"
             if result.get("unstamped_reads") else ""))
    if final:
        behind = {ch: final.get(ch, 0) - low for ch, (low, _high) in result["last_seq"].items()}
        print(f"    every client's last book vs the channel's at the end: at most {max(behind.values())} behind")


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "n/a"


def start_floor() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    floor = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor.py"), "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.post(base + "/pub/probe", content=b"x").status_code == 201, 20, "the floor")
    except SystemExit:
        stop_all([floor])
        raise
    return floor, base


def fresh_simulator(args: argparse.Namespace,
                    processes: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], int]:
    """A simulated exchange of its own for one measurement, from the same
    seed (every target sees the same market), and its broker's port. One
    simulator for every target let each inherit what the ones before left in
    its broker: its end to end p50 went from 35 to 102 ms over two runs
    (2026-12-07), in the favour of whichever was measured first."""
    # Diffs are measured at the default market's churn between two of the
    # exchange's pushes (1–2 s): with pushes every I s, I/1.5 as long between them.
    activity = 1.5 / args.interval if args.books == "diff" else None
    simulator, broker_port = start_simulator(extra_symbols=args.channels, book_interval=args.interval,
                                             activity=activity, books_together=args.pattern == "burst")
    processes.append(simulator)
    args.simulator = ProcessStats(simulator.pid)  # its CPU in the measured window
    return simulator, broker_port


Fresh = tuple[list[subprocess.Popen[bytes]], str, int]


def fresh_gateway(channels: list[str], args: argparse.Namespace,
                  processes: list[subprocess.Popen[bytes]]) -> Fresh:
    """A gateway process of its own (a process that already served 10,000
    clients has a slower tail) on a simulated exchange of its own: both
    processes (to stop when done), the gateway's URL, and the pid that serves
    (granian's worker)."""
    simulator, broker_port = fresh_simulator(args, processes)
    gateway, base = start_gateway(broker_port, channels, server=args.server)
    processes.append(gateway)
    serving = nchan_worker(gateway) if args.server == "granian" else gateway.pid
    return [simulator, gateway], base, serving


def bridged(start: Any, channels: list[str], args: argparse.Namespace, ws: bool,
            pid_of: Any, processes: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """One reference (nchan or the floor), fed by a bridge from a gateway's
    stream (the gateway and its simulator fresh, as for the gateway's own
    measurement), measured."""
    feeding, base, _serving = fresh_gateway(channels, args, processes)
    server, server_base = start()
    processes.append(server)
    stop = threading.Event()
    feeder = threading.Thread(target=bridge, args=(base, server_base, channels, stop), daemon=True)
    feeder.start()
    try:
        ids = [nchan_id(c) for c in channels]
        return run_loadgen(server_base, "/sub/{channel}", ids, args, ProcessStats(pid_of(server)), ws=ws,
                           subscribe=False)
    finally:
        stop.set()
        stop_all([server, *feeding])


def measure(channels: list[str], args: argparse.Namespace, ws: bool,
            processes: list[subprocess.Popen[bytes]], turn: int = 0) -> dict[str, dict[str, Any]]:
    """One run: the gateway (and, with ``--books diff``, its diffs and whole
    books again), nchan and the floor, each measured on fresh processes of
    its own (the simulator too). The order turns with ``turn`` (the run's
    number from 0), so that no target is measured first in every run: the
    first run has the gateway first, the second nchan, the third the floor."""
    results: dict[str, dict[str, Any]] = {}
    path = "/v1/ws" if ws else "/v1/stream?channels={channel}"

    def gateway() -> None:
        runs = [("gateway", path, "full")]
        if args.books == "diff":
            # Whole books once more after the diffs: diffs are set beside the mean of both.
            runs += [("gateway, diffs", path if ws else path + "&books=diff", "diff"),
                     ("gateway, full again", path, "full")]
        for name, gateway_path, books in runs:
            started, base, serving = fresh_gateway(channels, args, processes)
            results[name] = run_loadgen(base, gateway_path, channels, args, ProcessStats(serving), ws=ws,
                                        subscribe=ws, gc_of=base, books=books)
            report_of = httpx.get(base + "/v1/channels", timeout=60).json()
            results[name]["final"] = {c["channel"]: c["seq"] for c in report_of["channels"]}
            stop_all(started)

    def nchan() -> None:
        workdir = Path(tempfile.mkdtemp(prefix="nchan-"))
        try:
            results["nchan"] = bridged(lambda: start_nchan(workdir), channels, args, ws,
                                       lambda nginx: nchan_worker(nginx), processes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def floor() -> None:
        results["floor"] = bridged(start_floor, channels, args, ws, lambda floor: floor.pid, processes)

    targets = [t for name, t in (("gateway", gateway), ("nchan", nchan), ("floor", floor))
               if args.target in ("all", name)]
    at = turn % len(targets)
    for target in targets[at:] + targets[:at]:
        target()
    return results


def discarded_pass(channels: list[str], args: argparse.Namespace, ws: bool,
                   processes: list[subprocess.Popen[bytes]]) -> None:
    """One pass of the clients against the floor, fed as in a run and
    measured at most 5 s, its figures discarded, before the first run: so
    that whichever target is measured first does not also meet a machine
    that has never held this many sockets (the kernel's socket caches grow
    on the first ones). It removes that one possible cause of a first
    measurement's being worse; it does not say there was one."""
    warm = argparse.Namespace(**vars(args))
    warm.seconds, warm.warmup = min(args.seconds, 5.0), min(args.warmup, 3.0)
    started = time.monotonic()
    result = bridged(start_floor, channels, warm, ws, lambda floor: floor.pid, processes)
    print(f"  a discarded pass first: the floor, {result['connected_at_start']} clients connected, "
          f"{result['ended_early']} ended early; {time.monotonic() - started:.0f} s with its processes' "
          f"start and stop", flush=True)


def print_run(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    for name in ("gateway", "gateway, diffs", "gateway, full again"):
        if name not in results:
            continue
        books = {"gateway, diffs": ", books=diff", "gateway, full again": ", whole books again"}.get(name, "")
        report(f"coinsuper-gateway ({args.server}{books})", results[name], results[name].get("final", {}))
        collected = results[name]["gc_in_window"]
        print("    garbage collections in the measured window (generation: count, seconds): " + ", ".join(
            f"{g}: {collected.get(g, 0):.0f}, {collected.get(g + '_s', 0):.3f}" for g in ("0", "1", "2")))
    if "gateway, diffs" in results:
        diffs, runs = results["gateway, diffs"], (results["gateway"], results["gateway, full again"])

        def mean(pick: Any) -> float:
            return sum(pick(run) for run in runs) / len(runs)

        print(f"  diffs / whole books (the mean of the runs before and after): bytes per client per second "
              f"{ratio(diffs['bytes_per_client_per_second'], mean(lambda r: r['bytes_per_client_per_second']))}, "
              f"deliveries per core-second "
              f"{ratio(diffs['deliveries_per_core_second'], mean(lambda r: r['deliveries_per_core_second']))}, "
              f"p99 fan-out lag "
              f"{ratio(diffs['fanout_lag_ms']['p99'], mean(lambda r: r['fanout_lag_ms']['p99']))}, "
              f"p99 end to end {ratio(diffs['lag_ms']['p99'], mean(lambda r: r['lag_ms']['p99']))}")
    if "nchan" in results:
        report("nginx + nchan (1 worker)", results["nchan"], {})
    if "floor" in results:
        report("the floor (bench/floor.py: one uvloop process, frames made once, no limits)", results["floor"], {})
    ours = results.get("gateway")
    for name, label in (("nchan", "nchan"), ("floor", "the floor")):
        if ours is not None and name in results:
            theirs = results[name]
            print(f"  gateway / {label}: p99 fan-out lag "
                  f"{ratio(ours['fanout_lag_ms']['p99'], theirs['fanout_lag_ms']['p99'])} "
                  f"(to the kernel {ratio(ours['kernel_fanout_lag_ms']['p99'], theirs['kernel_fanout_lag_ms']['p99'])}), "
                  f"p99 end to end {ratio(ours['lag_ms']['p99'], theirs['lag_ms']['p99'])} "
                  f"(to the kernel {ratio(ours['kernel_lag_ms']['p99'], theirs['kernel_lag_ms']['p99'])}), "
                  f"KiB per client {ratio(ours['kib_per_client'], theirs['kib_per_client'])}, "
                  f"deliveries per core-second "
                  f"{ratio(ours['deliveries_per_core_second'], theirs['deliveries_per_core_second'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["all", "gateway", "nchan", "floor"], default="all",
                        help="nchan and the floor are fed from a gateway, which runs either way")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("--pattern", choices=["phased", "burst"], default="phased",
                        help="each book at a phase of its own, or all of them stamped at once (a burst)")
    parser.add_argument("--runs", type=int, default=1, help="measure every target this many times, in turn (the order turns: each run starts with another target)")
    parser.add_argument("--books", choices=["full", "diff"], default="full",
                        help="diff: the gateway three times, whole books, diffs, whole books again")
    parser.add_argument("--discarded-pass", action=argparse.BooleanOptionalAction, default=True,
                        help="before the first run, one pass of the clients against the floor, its figures "
                             "discarded (see discarded_pass)")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn",
                        help="what serves the gateway: its own (uvicorn and its protocols) or granian (pip install granian)")
    args, channels = book_load(parser)
    processes: list[subprocess.Popen[bytes]] = []
    ws = args.transport == "ws"
    runs: list[dict[str, dict[str, Any]]] = []
    try:
        print(f"machine: {machine()}; {priorities()}")
        print(f"fan-out, {args.transport.upper()}: {args.clients} clients over {args.channels} order books "
              f"pushed every {args.interval} s, {'all at once (burst)' if args.pattern == 'burst' else 'each at its own phase'}; "
              f"measured {args.seconds} s each", flush=True)
        if args.discarded_pass:
            discarded_pass(channels, args, ws, processes)
        for number in range(1, args.runs + 1):
            results = measure(channels, args, ws, processes, turn=number - 1)
            runs.append(results)
            if args.runs > 1:
                print(f" run {number} of {args.runs}")
            print_run(results, args)
            print(json.dumps(results), flush=True)
        if args.runs > 1 and all("gateway" in r and "nchan" in r for r in runs):
            # nchan's end to end includes a gateway's hop and the bridge's (in the
            # gateway's favour): the fan-out lag, from each server's receipt, is
            # the like-for-like figure. Both, run by run.
            for figure, label in (("fanout_lag_ms", "fan-out"), ("lag_ms", "end to end"),
                                  ("kernel_fanout_lag_ms", "fan-out to the kernel"),
                                  ("kernel_lag_ms", "end to end to the kernel")):
                ratios = [r["gateway"][figure]["p99"] / max(r["nchan"][figure]["p99"], 0.001) for r in runs]
                print(f"  p99 {label}, gateway / nchan, run by run: {', '.join(f'{x:.2f}×' for x in ratios)}"
                      f" ({sum(x <= 1 for x in ratios)} of {len(ratios)} at or below nchan's)")
    finally:
        stop_all(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
