"""The world of the stream tests: Mosquitto, a publisher playing the exchange,
a tape of distinct trades pushed as rolling "latest 50" windows, and gateways."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.support import ENV, EventStream, GatewayProcess, Mosquitto, Publisher, sample, wait_for

BOOK_TOPIC = ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.01"
TRADES_TOPIC = ENV + "/api/ws/v1/market/tickers/BTC_USD"
CHANNELS = "trades:BTC_USD,orderbook:BTC_USD:0.01"


class Tape:
    """Distinct trades, pushed as the exchange does: the latest 50, newest first."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.trades: list[dict[str, Any]] = []
        self.ts = 1_700_000_000_000
        self.rng = random.Random(5)
        self.book = json.loads(sample("orderBook_BTC_USD_0.01.json"))

    def add(self, n: int, push: bool = True) -> None:
        for _ in range(n):
            self.ts += self.rng.choice([0, 1, 7])
            self.trades.append({
                "symbol": "BTC/USD",
                "price": f"{self.rng.randint(600000, 700000) / 100:.2f}",
                "quantity": f"{self.rng.randint(1, 9999) / 10000:.4f}",
                "action": self.rng.choice(["BUY", "SELL"]),
                "timestamp": self.ts,
            })
        if push:
            self.push()

    def push(self) -> None:
        window = list(reversed(self.trades[-50:]))
        self.publisher.publish(TRADES_TOPIC, json.dumps(window).encode())

    def push_book(self) -> int:
        self.book["timestamp"] += 1
        self.publisher.publish(BOOK_TOPIC, json.dumps(self.book).encode())
        return int(self.book["timestamp"])

    def as_events(self, start: int, end: int | None = None) -> list[dict[str, Any]]:
        return [
            {"price": t["price"], "quantity": t["quantity"], "side": t["action"].lower(), "ts": t["timestamp"]}
            for t in self.trades[start:end]
        ]


class World:
    def __init__(self, workdir: Path, mosquitto: Mosquitto, publisher: Publisher, tape: Tape) -> None:
        self.workdir, self.mosquitto, self.publisher, self.tape = workdir, mosquitto, publisher, tape

    def gateway(self, port: int | None = None, **env: str) -> GatewayProcess:
        gw = GatewayProcess(self.workdir, {
            "COINSUPER_URL": self.mosquitto.url("tcp"),
            "COINSUPER_SUBSCRIBE": CHANNELS,
            "GATEWAY_STALE_FACTOR": "1000",
            **env,
        }, port=port)
        wait_for(lambda: all(c["link_state"] == "up" for c in gw.channels().values()), 15, "links up")
        return gw


def trades_of(stream: EventStream) -> list[dict[str, Any]]:
    return [t["data"] for t in stream.named("trade")]


def start_flowing(world: World, gw: GatewayProcess) -> None:
    world.tape.add(5)
    world.tape.push_book()
    wait_for(lambda: gw.http.get("/v1/trades/BTC_USD?wait=0").status_code == 200, 10, "trades")
    wait_for(lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01&wait=0").status_code == 200, 10, "book")
