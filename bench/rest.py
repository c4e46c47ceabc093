"""REST snapshots beside nginx serving the same bytes as static files, in one run.

    .venv/bin/python bench/rest.py --seconds 3 --rounds 3 --connections 50

The simulated exchange (with its demo account) feeds one gateway process. Once
every snapshot route has data, the exchange stops, so that every answer stays
the same bytes for the run; each route's answer is written to a file that
nginx (Debian's, one worker, ``etag on``, no access log) serves. wrk (one
thread, one core's worth of load) then loads, route by route and interleaved:

- the gateway (its fast path, app/http/fast.py), and with ``If-None-Match`` → 304;
- nginx, the same bytes as a static file, and with its ETag → 304;
- the gateway's ``/healthz`` and, on a second gateway with
  ``GATEWAY_FAST_ROUTES=false``, the framework path (FastAPI) for the book.

Each figure is the median of ``--rounds`` loads, the four of a route taken in
turn in each round: on this VM one load of a few seconds moved by a fifth
from one minute to the next (a route's 304s measured at 0.69× its own 200s,
though a 304 does less of the same work).

Both gateways run with ``GATEWAY_ACCESS_LOG=false``: an access line per
request costs more than the answer at these rates (docs/operating.md). The
gateway's CPU per request is read from ``/proc``. Figures are ratios to
nginx in the same run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import (
    ProcessStats,
    machine,
    start_gateway,
    start_nginx,
    start_simulator,
    stop_all,
    wait_until,
)

TOKEN = "bench-token-" + "r" * 20
ROUTES = [
    "/v1/orderbook/BTC_USD?step=0.01",
    "/v1/depth/BTC_USD",
    "/v1/kline/BTC_USD?range=1m",
    "/v1/klines/BTC_USD?range=1m&limit=100",
    "/v1/trades/BTC_USD?limit=50",
    "/v1/account/assets",
    "/v1/account/orders",
    "/v1/account/fills?limit=100",
]
CHANNELS = ["orderbook:BTC_USD:0.01", "depth:BTC_USD", "kline:BTC_USD:1m", "trades:BTC_USD", "assets", "orders",
            "fills"]
# The reference: each route's bytes as a static file, with an ETag.
STATIC = "root {dir}/files;"
STATIC_TYPES = "default_type application/json; etag on;"


def wrk(url: str, seconds: float, connections: int, *headers: str) -> float:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: make bench-deps")
    options = [item for header in headers for item in ("-H", header)]
    out = subprocess.run([binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", *options, url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or ("Non-2xx" in out and not any(h.startswith("If-None-Match") for h in headers)):
        raise SystemExit(f"wrk failed on {url}:\n{out}")
    return float(match.group(1))


def static_name(route: str) -> str:
    """The file nginx serves a route's bytes from (no query: nginx ignores it)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", route.strip("/")) + ".json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3, help="each load")
    parser.add_argument("--rounds", type=int, default=3, help="loads per figure: the median is the figure")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    simulator, broker_port = start_simulator()
    processes = [simulator]
    workdir = Path(tempfile.mkdtemp(prefix="rest-bench-"))
    (workdir / "files").mkdir()
    (workdir / "files" / "probe").write_text("ok")
    env = {"COINSUPER_SECRET_KEY": "demo-secret-key", "GATEWAY_TOKENS": TOKEN, "GATEWAY_STALE_FACTOR": "1000",
           "GATEWAY_ACCESS_LOG": "false", "GATEWAY_LOG_LEVEL": "error"}
    auth = f"Authorization: Bearer {TOKEN}"
    try:
        gateway, base = start_gateway(broker_port, CHANNELS, **env)
        # The framework's gateway answers only the book: it has no private link
        # (one login per account: two would take the exchange's session in turns).
        public = {name: value for name, value in env.items() if name != "COINSUPER_SECRET_KEY"}
        framework, framework_base = start_gateway(broker_port, CHANNELS[:1], GATEWAY_FAST_ROUTES="false", **public)
        processes += [gateway, framework]
        http = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        for route in ROUTES:
            wait_until(lambda route=route: http.get(base + route).status_code == 200
                       and bool(http.get(base + route).json()["data"]), 60, f"data for {route}")
        wait_until(lambda: http.get(framework_base + ROUTES[0]).status_code == 200, 30, "the second gateway")
        simulator.terminate()  # nothing changes from here
        simulator.wait(15)
        time.sleep(1)
        answers = {route: http.get(base + route) for route in ROUTES}
        for route, answer in answers.items():
            (workdir / "files" / static_name(route)).write_bytes(answer.content)
        nginx, nginx_base = start_nginx(workdir, server=STATIC.format(dir=workdir), http=STATIC_TYPES,
                                        ready=lambda base: httpx.get(base + "/probe").status_code == 200)
        processes.append(nginx)
        nginx_etags = {route: httpx.get(nginx_base + "/" + static_name(route)).headers["etag"] for route in ROUTES}
        print(f"machine: {machine()}")
        print(f"REST with wrk (1 thread, {args.connections} connections, {args.seconds:g} s each, the median of "
              f"{args.rounds} rounds); the gateway on one core; nginx 1 worker, the same bytes as static files")
        print(f"  {'route':42} {'bytes':>6} {'gateway':>9} {'µs/req':>7} {'nginx':>9} {'ratio':>6} "
              f"{'304 gw':>9} {'304 nginx':>9} {'ratio':>6} {'gw 304/200':>10}")
        serving = ProcessStats(gateway.pid)
        for route in ROUTES:
            nginx_file = nginx_base + "/" + static_name(route)
            loads: dict[str, list[float]] = {"ours": [], "cpu": [], "theirs": [], "ours_304": [], "theirs_304": []}
            for _ in range(args.rounds):
                before = serving.cpu_seconds()
                ours = wrk(base + route, args.seconds, args.connections, auth)
                loads["cpu"].append((serving.cpu_seconds() - before) / (ours * round(args.seconds)))
                loads["ours"].append(ours)
                loads["theirs"].append(wrk(nginx_file, args.seconds, args.connections))
                loads["ours_304"].append(wrk(base + route, args.seconds, args.connections, auth,
                                             f"If-None-Match: {answers[route].headers['etag']}"))
                loads["theirs_304"].append(wrk(nginx_file, args.seconds, args.connections,
                                               f"If-None-Match: {nginx_etags[route]}"))
            ours, cpu, theirs, ours_304, theirs_304 = (statistics.median(loads[k]) for k in
                                                       ("ours", "cpu", "theirs", "ours_304", "theirs_304"))
            print(f"  {route:42} {len(answers[route].content):>6} {ours:>9,.0f} {1e6 * cpu:>7.1f} "
                  f"{theirs:>9,.0f} {ours / theirs:>5.2f}× {ours_304:>9,.0f} {theirs_304:>9,.0f} "
                  f"{ours_304 / theirs_304:>5.2f}× {ours_304 / ours:>9.2f}×", flush=True)
        trivial = wrk(base + "/healthz", args.seconds, args.connections)
        slow = wrk(framework_base + ROUTES[0], args.seconds, args.connections, auth)
        print(f"  /healthz (through FastAPI): {trivial:,.0f} requests/s")
        print(f"  {ROUTES[0]} through FastAPI (GATEWAY_FAST_ROUTES=false): {slow:,.0f} requests/s")
    finally:
        stop_all(processes)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
