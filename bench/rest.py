"""REST snapshot throughput, as a ratio to a trivial route of the same server.

    .venv/bin/python bench/rest.py --seconds 10 --connections 50

wrk (Debian's) loads `/v1/orderbook/BTC_USD?step=0.01` and then `/healthz`
(a constant answer) on the same gateway, with the same settings, one after the
other, twice each, interleaved; the ratio of the rates holds on a noisy machine
where the absolute figures do not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

import httpx
from common import machine, start_gateway, start_simulator, wait_until


def wrk(url: str, seconds: float, connections: int) -> float:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    out = subprocess.run([binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or "Non-2xx" in out:
        raise SystemExit(f"wrk failed on {url}:\n{out}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    simulator, broker_port = start_simulator()
    processes = [simulator]
    try:
        gateway, base = start_gateway(broker_port, ["orderbook:BTC_USD:0.01"], GATEWAY_LOG_LEVEL="error")
        processes.append(gateway)
        wait_until(lambda: httpx.get(base + "/v1/orderbook/BTC_USD?step=0.01").status_code == 200, 10, "a book")
        snapshot, trivial = [], []
        for _ in range(2):
            snapshot.append(wrk(base + "/v1/orderbook/BTC_USD?step=0.01", args.seconds, args.connections))
            trivial.append(wrk(base + "/healthz", args.seconds, args.connections))
        snap, triv = sum(snapshot) / 2, sum(trivial) / 2
        size = len(httpx.get(base + "/v1/orderbook/BTC_USD?step=0.01").content)
        print(f"machine: {machine()}")
        print(f"REST with wrk, {args.connections} connections, {args.seconds:g} s × 2 each, interleaved:")
        print(f"  /v1/orderbook/BTC_USD?step=0.01 ({size} bytes): {snap:,.0f} requests/s")
        print(f"  /healthz (trivial): {triv:,.0f} requests/s")
        print(f"  ratio: {100 * snap / triv:.0f}% of the trivial route's rate")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
