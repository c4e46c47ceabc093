"""Soak: the simulated exchange with random broker restarts, SSE clients that
drop and resume at random, and at the end a check that every client saw every
distinct trade exactly once, in order.

Run from a clone (after `make demo` or `make test` made .venv):

    .venv/bin/python bench/soak.py --minutes 5 --clients 20

The simulator runs in this process and keeps every trade it made (the truth);
the gateway runs as a process of its own (`python -m app serve`); the clients
are asyncio tasks in this process reading `/v1/stream` with httpx and resuming
with `Last-Event-ID`. Exit status 0 when every client saw exactly the truth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coinsuper_gateway_client import sse_blocks  # noqa: E402
from common import machine  # noqa: E402

from app.cli import free_port  # noqa: E402
from app.simulator import Simulator  # noqa: E402
from app.simulator.broker import BrokerPorts  # noqa: E402

SYMBOL = "BTC_USD"
CHANNELS = "trades:BTC_USD,orderbook:BTC_USD:0.01"
Trade = tuple[str, str, str, int]


@dataclass
class Client:
    name: str
    trades: list[Trade] = field(default_factory=list)
    last_id: str | None = None
    drops: int = 0
    resets: int = 0
    events: int = 0


async def follow(base: str, client: Client, until: float, rng: random.Random) -> None:
    """Read the stream; drop at random moments; resume with the last id."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as http:
        while time.monotonic() < until:
            headers = {"Last-Event-ID": client.last_id} if client.last_id else {}
            session_end = min(until, time.monotonic() + rng.uniform(2, 20))
            try:
                async with asyncio.timeout(max(0.1, session_end - time.monotonic())):
                    await read_session(http, base, client, headers)
            except TimeoutError:
                client.drops += 1  # our own drop: the connection is cut mid-stream
            except (httpx.HTTPError, OSError):
                await asyncio.sleep(0.5)  # the gateway cut it: resume
            await asyncio.sleep(rng.uniform(0, 3))


async def read_session(http: httpx.AsyncClient, base: str, client: Client, headers: dict[str, str]) -> None:
    async with http.stream("GET", f"{base}/v1/stream?channels={CHANNELS}", headers=headers) as response:
        response.raise_for_status()
        async for event in sse_blocks(response.aiter_lines()):
            if "data" in event:
                client.events += 1
                if event.get("event") == "reset":
                    client.resets += 1
                if event.get("event") == "trade":
                    data = json.loads(event["data"])["data"]
                    client.trades.append((data["price"], data["quantity"], data["side"], data["ts"]))
                if "id" in event:
                    client.last_id = event["id"]


async def restart_broker_now_and_then(sim: Simulator, until: float, rng: random.Random, log: list[str]) -> None:
    while time.monotonic() < until - 15:
        await asyncio.sleep(rng.uniform(10, 40))
        if time.monotonic() >= until - 15:
            break
        down = rng.uniform(1, 6)
        log.append(f"broker down {down:.1f} s at {time.strftime('%H:%M:%S')}")
        await sim.stop_broker()
        await asyncio.sleep(down)
        await sim.start_broker()


async def main(minutes: float, clients: int, seed: int) -> int:
    rng = random.Random(seed)
    ports = BrokerPorts(tcp=free_port(), ws=free_port())
    sim = Simulator(ports, seed=seed, trade_rate=3.0)
    sim.market.symbols[SYMBOL].history = []
    await sim.start()
    port = free_port()
    env = {
        **os.environ,
        "COINSUPER_URL": f"mqtt://127.0.0.1:{ports.tcp}",
        "COINSUPER_ACCESS_KEY": sim.account.access_key,
        "COINSUPER_EMAIL": sim.account.email,
        "COINSUPER_SUBSCRIBE": CHANNELS,
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    gateway = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "serve", cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    if (await http.get(f"{base}/v1/trades/{SYMBOL}?wait=1000")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
        started = time.monotonic()
        until = started + minutes * 60
        events: list[str] = []
        readers = [Client(f"client-{i}") for i in range(clients)]
        tasks = [asyncio.create_task(follow(base, c, until, random.Random(seed + i))) for i, c in enumerate(readers)]
        tasks.append(asyncio.create_task(restart_broker_now_and_then(sim, until, rng, events)))
        await asyncio.gather(*tasks)
        # Trading stops; pushes go on, so the last trades reach the gateway.
        sim.trade_rate = 0
        await asyncio.sleep(5)
        # The last sessions ended at `until`: read what each missed since, to the end.
        settle_until = time.monotonic() + 8
        await asyncio.gather(*(
            follow(base, c, settle_until, random.Random(0)) for c in readers
        ))
    finally:
        gateway.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gateway.wait(), 20)
        await sim.stop()

    history = sim.market.symbols[SYMBOL].history or []
    truth: list[Trade] = [
        (format(t.price, "f"), format(t.quantity, "f"), t.action.lower(), t.ts) for t in history
    ]
    failures = 0
    for client in readers:
        seen = client.trades
        if not seen:
            print(f"{client.name}: no trade seen")
            failures += 1
            continue
        # The client's first trade is where its view starts; from there on it
        # must be the truth itself: nothing missing, nothing twice, in order.
        starts = [i for i, t in enumerate(truth) if t == seen[0]]
        ok = any(truth[i : i + len(seen)] == seen for i in starts)
        complete = ok and seen[-1] == truth[-1] if truth else False
        if not ok or not complete or client.resets:
            failures += 1
            print(f"{client.name}: FAILED (exact={ok}, up to the end={complete}, resets={client.resets})")
    total = sum(len(c.trades) for c in readers)
    print(f"machine: {machine()}")
    print(f"soak: {minutes:g} min, {clients} clients, {len(truth)} trades made, "
          f"{len(events)} broker restarts, {sum(c.drops for c in readers)} client drops and resumes, "
          f"{total} trade deliveries checked, {sum(c.events for c in readers)} events read")
    for line in events:
        print("  " + line)
    print(f"result: {clients - failures}/{clients} clients saw every distinct trade exactly once, in order")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5, help="how long to soak (default 5)")
    parser.add_argument("--clients", type=int, default=20, help="SSE clients (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.minutes, args.clients, args.seed)))
