"""Ingest throughput: upstream messages per second through decoding, the store,
the replay buffer and the fan-out, in this process, with no stream and with
many (subscriptions whose buffers are filled, as a stream's would be).

    .venv/bin/python bench/ingest.py --messages 50000 --subscribers 0,1000,10000

Each message goes down the gateway's ingest pipeline (routing, decoding, the
store, the event log, the fan-out). The messages are the simulator's own payloads (books, depth charts, trade
windows, candles), taken from a run of its market, fed in a loop.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from common import machine

from app.config import load_settings
from app.domain import decode as decode_module
from app.domain.channels import parse_channel
from app.gateway import Gateway
from app.http.sinks import sse_chunk
from app.ingest.pipeline import Pipeline
from app.ports import Transport
from app.simulator.market import Market

# Messages a second on one core with no subscription that the gateway aims at
# (no reference server does this work: the ratio is to the aim).
TARGET = 20_000


def payloads(count: int) -> list[tuple[str, bytes, int]]:
    """(channel, payload, the market's clock when it was made: its receive time)."""
    market = Market(seed=3)
    now = 1_800_000_000_000
    out: list[tuple[str, bytes, int]] = []
    rng = random.Random(3)
    while len(out) < count:
        now += 100
        market.tick(now, 5.0, 0.1)
        kind = rng.choice(["book", "book", "trades", "depth", "kline"])
        if kind == "book":
            out.append(("orderbook:BTC_USD:0.01", market.orderbook("BTC_USD", "0.01", now), now))
        elif kind == "trades":
            out.append(("trades:BTC_USD", market.tickers("BTC_USD"), now))
        elif kind == "depth":
            out.append(("depth:BTC_USD", market.depth("BTC_USD"), now))
        else:
            out.append(("kline:BTC_USD:1m", market.kline("BTC_USD", 60_000, now), now))
    return out


class CountingSink:
    """A stream's sink that keeps nothing: the fan-out's cost without a socket's."""

    label = "stream"
    direct: Transport | None = None  # every write goes through write

    def __init__(self) -> None:
        self.form = sse_chunk
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def heartbeat(self) -> None:
        pass

    def end(self, ending: object) -> None:
        pass


def run(messages: list[tuple[str, bytes, int]], subscribers: int) -> tuple[float, int, int]:
    gateway = Gateway(load_settings(gateway_replay_events=100_000))
    hub = gateway.hub
    channels = {name: parse_channel(name) for name, _, _ in messages}
    names = list(channels)
    for i in range(subscribers):
        opening = hub.open(f"bench:{i}", [channels[names[i % len(names)]]], None, 1_000_000)
        hub.attach(opening.stream, CountingSink(), b"")
    # The gateway's own pipeline, routing channel names as if they were topics,
    # with the decoder's caches of checked values as a new process has them.
    decode_module.forget_checked()
    pipeline = Pipeline(channels.get, hub)
    started = time.perf_counter()
    for name, payload, received_ts in messages:
        pipeline.feed(name, payload, received_ts)
    elapsed = time.perf_counter() - started
    rejected = sum(state.rejected for state in hub.store.channels.values())
    return len(messages) / elapsed, hub.store.seq, rejected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--subscribers", default="0,1000,10000", help="comma-separated counts to try")
    parser.add_argument("--passes", type=int, default=5,
                        help="passes over the messages with no subscription (the target's figure), each "
                             "from cold caches: the median is the figure (one pass for the other counts)")
    args = parser.parse_args()
    messages = payloads(args.messages)
    print(f"machine: {machine()}")
    for count in (int(c) for c in args.subscribers.split(",")):
        passes = [run(messages, count) for _ in range(args.passes if count == 0 else 1)]
        rates = sorted(rate for rate, _, _ in passes)
        rate, (_, events, rejected) = statistics.median(rates), passes[0]
        target = f"; {rate / TARGET:.2f}× the target of {TARGET:,} (issue 23)" if count == 0 else ""
        spread = f"the median of {len(rates)} passes: {', '.join(f'{r:,.0f}' for r in rates)}; " if len(rates) > 1 else ""
        print(
            f"ingest with {count} subscriptions: {rate:,.0f} messages/s on one core "
            f"({spread}{events} events made, {rejected} payloads rejected{target})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
