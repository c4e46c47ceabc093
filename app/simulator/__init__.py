"""The simulated exchange: an MQTT broker with the exchange's rules, and a
market that publishes on every public topic at the documented rates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from amqtt.broker import Broker

from app.domain.channels import KLINE_RANGES, TopicTemplates
from app.ingest.recording import Recorder
from app.simulator.account import DemoTrader, PrivateFaults
from app.simulator.broker import BrokerPorts, DemoAccount, make_broker
from app.simulator.market import DEFAULT_SYMBOLS, Activity, Market, SymbolSpec

log = logging.getLogger("coinsuper_gateway.simulator")

TICK_S = 0.1


def _ignore_now(payload: Callable[[str], bytes], symbol: str, now_ms: int) -> bytes:
    return payload(symbol)


@dataclass(slots=True)
class Schedule:
    """One topic and when it is next published."""

    topic: str
    payload: Callable[[int], bytes]
    interval: tuple[float, float]  # seconds, drawn uniformly for every push
    due: float = 0.0
    phased: bool = True  # first push at a random phase within the interval; else at the start


class Simulator:
    """A local stand-in for the exchange."""

    def __init__(
        self,
        ports: BrokerPorts | None = None,
        *,
        account: DemoAccount | None = None,
        env: str = "exchange_ha_prod_hk",
        templates: TopicTemplates | None = None,
        seed: int | None = None,
        trade_rate: float = 2.0,
        speed: float = 1.0,
        private_faults: float = 0.0,
        skew_s: float = 60.0,
        recorder: Recorder | None = None,
        extra_symbols: int = 0,
        book_interval: float | None = None,
        activity: Activity | None = None,
        books_together: bool = False,
    ) -> None:
        self.ports = ports or BrokerPorts()
        self.account = account or DemoAccount()
        self.env = env
        self.templates = templates or TopicTemplates()
        extra = tuple(
            SymbolSpec(f"SIM{i:02d}_USD", Decimal(100 + 10 * i), 2) for i in range(extra_symbols)
        )
        self.market = Market(DEFAULT_SYMBOLS + extra, seed=seed, activity=activity)
        # Order books pushed every this many seconds exactly (benchmarks), else every 1–2 s.
        self.book_interval = book_interval
        # Every order book pushed at the same moments (a burst), not each at a phase
        # of its own: with book_interval, they stay together.
        self.books_together = books_together
        self.trade_rate = trade_rate
        self.speed = speed
        self.rng = random.Random(seed)
        self.published = 0
        self.trader = DemoTrader(self.market, self.account.email, self.account.user_no, self.rng)
        self.faults = PrivateFaults(private_faults, random.Random(seed))
        self.private_topics = {
            kind: self._topic(getattr(self.templates, kind), email=self.account.email)
            for kind in ("assets", "orders", "fills")
        }
        self.skew_s = skew_s
        self.recorder = recorder
        self._broker: Broker | None = None
        self._task: asyncio.Task[None] | None = None
        self.schedules = self._schedules()

    def _topic(self, template: str, **values: object) -> str:
        return self.env + template.format(**values)

    def _schedules(self) -> list[Schedule]:
        t, market = self.templates, self.market
        every_1_to_2 = (1.0 / self.speed, 2.0 / self.speed)
        schedules = []
        for symbol in market.symbols:
            every_second = (1.0 / self.speed, 1.0 / self.speed)
            schedules.append(
                Schedule(
                    self._topic(t.depth, symbol=symbol),
                    partial(_ignore_now, market.depth, symbol),
                    every_second,
                )
            )
            schedules.append(
                Schedule(
                    self._topic(t.trades, symbol=symbol),
                    partial(_ignore_now, market.tickers, symbol),
                    every_1_to_2,
                )
            )
            for step in market.steps(symbol):
                schedules.append(
                    Schedule(
                        self._topic(t.orderbook, symbol=symbol, step=step),
                        partial(market.orderbook, symbol, step),
                        (self.book_interval,) * 2 if self.book_interval else every_1_to_2,
                        phased=not self.books_together,
                    )
                )
            for range_ms in KLINE_RANGES.values():
                schedules.append(
                    Schedule(
                        self._topic(t.kline, symbol=symbol, range_ms=range_ms),
                        partial(market.kline, symbol, range_ms),
                        every_1_to_2,
                    )
                )
        return schedules

    async def start(self) -> None:
        await self.start_broker()
        self._task = asyncio.create_task(self._run(), name="simulated market")

    async def start_broker(self) -> None:
        """Start (or start again, after :meth:`stop_broker`) the broker."""
        if self._broker is not None:
            return
        broker = make_broker(
            self.account, self.ports, sorted(self.private_topics.values()), self.skew_s
        )
        await broker.start()
        self._broker = broker
        log.info(
            "simulated exchange on mqtt://%s:%d and ws://%s:%d/mqtt",
            self.ports.host,
            self.ports.tcp,
            self.ports.host,
            self.ports.ws,
        )

    async def stop_broker(self) -> None:
        """Shut the broker down (every client is dropped); the market goes on."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    @property
    def broker_running(self) -> bool:
        return self._broker is not None

    async def _publish(self, topic: str, payload: bytes) -> None:
        if self._broker is not None:
            if self.recorder is not None:
                self.recorder.write(topic, payload, time.time_ns() // 1_000_000)
            await self._broker.internal_message_broadcast(topic, payload, qos=0)

    async def pause(self) -> None:
        """Stop the market and the account (the broker stays up): nothing more is published."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def stop(self) -> None:
        await self.pause()
        await self.stop_broker()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for schedule in self.schedules:
            schedule.due = start + (
                self.rng.uniform(0, schedule.interval[0]) if schedule.phased else 0.0
            )
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            now_ms = time.time_ns() // 1_000_000
            self.market.tick(now_ms, self.trade_rate * self.speed, TICK_S)
            for kind, payload in self.trader.step(now_ms, TICK_S * self.speed):
                for topic, data in self.faults.apply(self.private_topics[kind], payload):
                    await self._publish(topic, data)
            for schedule in self.schedules:
                if schedule.due > now:
                    continue
                schedule.due = now + self.rng.uniform(*schedule.interval)
                # Stamped when it is made, as the exchange stamps a snapshot:
                # the tick's other payloads are made and published before it,
                # and their time is not the book's age (7 ms at the median,
                # 17 at p99, with 20 extra books; 2026-12-07).
                made_ms = time.time_ns() // 1_000_000
                await self._publish(schedule.topic, schedule.payload(made_ms))
                self.published += 1
