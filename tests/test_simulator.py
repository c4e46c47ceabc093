"""The simulated exchange: its broker enforces the exchange's login rules, its
market publishes sane payloads on every public topic, and `demo` serves them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError

from app.domain.channels import KLINE_RANGES
from app.ingest.credentials import public_client_id
from app.simulator import Simulator
from app.simulator.broker import BrokerPorts, DemoAccount
from tests.support import ENV, EventStream, free_port, gateway, wait_for

ACCOUNT = DemoAccount()
PUBLIC_PASSWORD = "da65be18f44b33b69603c39fd03ddf49"


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(BrokerPorts(tcp=free_port(), ws=free_port()), account=ACCOUNT, seed=7, speed=4)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def client(sim: Simulator, topic: str, *, transport: str = "tcp", password: str = PUBLIC_PASSWORD,
           client_id: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        sim.ports.ws if transport == "websockets" else sim.ports.tcp,
        identifier=client_id or public_client_id(ACCOUNT.access_key, ACCOUNT.email, topic),
        username="api_subscriber",
        password=password,
        transport=transport,  # type: ignore[arg-type]
        websocket_path="/mqtt",
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=5,
    )


async def first_message(sim: Simulator, topic: str, transport: str = "tcp") -> bytes:
    async with client(sim, topic, transport=transport) as c:
        await c.subscribe(topic)
        async with asyncio.timeout(10):
            async for message in c.messages:
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("no message")


async def test_the_right_login_receives_over_both_transports(simulator: Simulator) -> None:
    topic = ENV + "/api/ws/v1/market/depth/BTC_USD"
    for transport in ("tcp", "websockets"):
        depth = json.loads(await first_message(simulator, topic, transport))
        assert depth["symbol"] == "BTC/USD"


async def test_a_wrong_password_or_foreign_client_id_is_refused(simulator: Simulator) -> None:
    topic = ENV + "/api/ws/v1/market/depth/BTC_USD"
    with pytest.raises(MqttConnectError):
        async with client(simulator, topic, password="wrong"):
            pass
    with pytest.raises(MqttConnectError):
        async with client(simulator, topic, client_id=public_client_id("other-key", ACCOUNT.email, topic)):
            pass


async def test_a_topic_other_than_the_client_ids_is_refused(simulator: Simulator) -> None:
    named = ENV + "/api/ws/v1/market/depth/BTC_USD"
    other = ENV + "/api/ws/v1/market/depth/ETH_USD"
    async with client(simulator, named) as c:
        granted = await c.subscribe(other)
        assert all(code.is_failure for code in granted)  # type: ignore[union-attr]


async def test_every_public_topic_publishes_sane_payloads(simulator: Simulator) -> None:
    for symbol, steps in (("BTC_USD", ("1.0", "0.1", "0.01")), ("ETH_BTC", ("0.0001", "0.000001", "0.00000001"))):
        for step in steps:
            book = json.loads(await first_message(simulator, f"{ENV}/api/ws/v1/market/orderBook/{symbol}/{step}"))
            bids = [Decimal(level["limitPrice"]) for level in book["bids"]]
            asks = [Decimal(level["limitPrice"]) for level in book["asks"]]
            assert book["step"] == step and len(bids) == len(asks) == 15
            assert max(bids) < min(asks)
            assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    depth = json.loads(await first_message(simulator, f"{ENV}/api/ws/v1/market/depth/ETH_USD"))
    quantities = [Decimal(level["quantity"]) for level in depth["bids"]]
    assert quantities == sorted(quantities) and len(quantities) == 50
    trades = json.loads(await first_message(simulator, f"{ENV}/api/ws/v1/market/tickers/BTC_USD"))
    stamps = [t["timestamp"] for t in trades]
    assert stamps == sorted(stamps, reverse=True) and 0 < len(trades) <= 50
    for range_ms in (60_000, 604_800_000):
        assert range_ms in KLINE_RANGES.values()
        candle = json.loads(await first_message(simulator, f"{ENV}/api/ws/v1/market/kline/BTC_USD/{range_ms}"))
        low, high = Decimal(candle["min"]), Decimal(candle["max"])
        assert low <= Decimal(candle["first"]) <= high and low <= Decimal(candle["last"]) <= high
        assert candle["timestamp"] % range_ms == 0


@pytest.mark.processes
def test_demo_serves_a_live_book_and_a_stream(tmp_path: Path) -> None:
    with gateway(tmp_path, {}, command="demo") as gw:
        book = wait_for(
            lambda: (r := gw.http.get("/v1/orderbook/BTC_USD?step=0.01")).status_code == 200 and r.json(), 5,
            "a live book within 5 s",
        )
        assert book["stale"] is False and book["data"]["bids"] and book["data"]["asks"]
        stream = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD,orderbook:BTC_USD:0.01")
        wait_for(lambda: stream.named("trade") and len(stream.named("orderbook")) >= 2, 10, "trades and books")
        # Channels not configured at start are subscribed on demand.
        other = wait_for(
            lambda: (r := gw.http.get("/v1/orderbook/ETH_BTC?step=0.00000001")).status_code == 200 and r.json(),
            10, "an on-demand book",
        )
        assert other["symbol"] == "ETH/BTC" and other["data"]["step"] == "0.00000001"
        stream.close()
        assert "Traceback" not in gw.log_text()


def test_every_simulated_payload_decodes_without_rejection() -> None:
    import random

    from app.domain.channels import Channel, Kind, parse_channel
    from app.domain.decode import Rejection, decode
    from app.simulator.account import DemoTrader
    from app.simulator.market import Market

    market = Market(seed=11)
    trader = DemoTrader(market, ACCOUNT.email, ACCOUNT.user_no, random.Random(11))
    now = 1_800_000_000_000
    private = {"assets": Channel(Kind.ASSETS), "orders": Channel(Kind.ORDERS), "fills": Channel(Kind.FILLS)}
    kinds: dict[str, int] = {}
    for step in range(3000):
        now += 100
        market.tick(now, 4.0, 0.1)
        for kind, payload in trader.step(now, 0.1):
            result = decode(private[kind], payload)
            assert not isinstance(result, Rejection), (kind, result, payload)
            kinds[kind] = kinds.get(kind, 0) + 1
        if step % 50 == 0:
            for symbol in market.symbols:
                for step_text in market.steps(symbol):
                    channel = parse_channel(f"orderbook:{symbol}:{step_text}")
                    assert not isinstance(decode(channel, market.orderbook(symbol, step_text, now)), Rejection)
                checks = [
                    (parse_channel(f"depth:{symbol}"), market.depth(symbol)),
                    (parse_channel(f"trades:{symbol}"), market.tickers(symbol)),
                    (parse_channel(f"kline:{symbol}:1h"), market.kline(symbol, 3_600_000, now)),
                ]
                for channel, payload in checks:
                    result = decode(channel, payload)
                    assert not isinstance(result, Rejection), (channel, result)
    assert kinds.get("orders", 0) > 20 and kinds.get("fills", 0) > 10 and kinds.get("assets", 0) > 20


async def test_the_subscription_table_can_change_while_a_broadcast_walks_it() -> None:
    """amqtt awaits the topic filter inside its loop over the subscription
    table; a subscription made or dropped meanwhile must not end the loop."""
    from app.simulator.broker import SnapshotDict, make_broker

    broker = make_broker(ACCOUNT, BrokerPorts(tcp=free_port(), ws=free_port()), [])
    table = broker._subscriptions
    assert isinstance(table, SnapshotDict)
    table.update({"a": [], "b": []})
    walked = []
    for name, _ in table.items():  # as Broker._run_broadcast does
        walked.append(name)
        table["c" + name] = []
        table.pop("b", None)
    for name in table:  # as Broker._del_all_subscriptions does
        table[name + "!"] = []
    assert walked == ["a", "b"] and "ca" in table and "a!" in table
    plain: dict[str, list[object]] = {"a": []}
    with pytest.raises(RuntimeError, match="changed size"):
        for name, _ in plain.items():
            plain["c" + name] = []


async def test_subscriptions_churned_during_broadcasts(simulator: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    topics = [f"{ENV}/api/ws/v1/market/kline/{symbol}/{ms}" for symbol in ("BTC_USD", "ETH_USD") for ms in KLINE_RANGES.values()]

    async def churn(topic: str) -> int:
        received = 0
        for _ in range(3):
            async with aiomqtt.Client(
                "127.0.0.1", simulator.ports.tcp,
                identifier=public_client_id(ACCOUNT.access_key, ACCOUNT.email, topic),
                username="api_subscriber", password=PUBLIC_PASSWORD,
            ) as client:
                await client.subscribe(topic)
                await asyncio.sleep(0.3)
                await client.unsubscribe(topic)
                received += len(client.messages)
        return received

    with caplog.at_level("WARNING"):
        await asyncio.gather(*(churn(topic) for topic in topics))
        await asyncio.sleep(0.5)
    assert "dictionary changed size" not in caplog.text
    assert "Task failed" not in caplog.text


def _churn(activity: object, interval_s: float = 1.5, pushes: int = 120) -> float:
    """The mean share of the top 15 levels of a side (BTC_USD at 0.01) that are
    new or changed between two pushes ``interval_s`` apart."""
    import json as _json

    from app.simulator.market import Activity, Market

    assert isinstance(activity, Activity)
    market = Market(seed=5, activity=activity)
    now, previous, shares = 1_800_000_000_000, None, []
    for _ in range(pushes):
        for _ in range(int(interval_s / 0.1)):
            now += 100
            market.tick(now, 2.0, 0.1)
        book = _json.loads(market.orderbook("BTC_USD", "0.01", now))
        sides = {side: {(lv["limitPrice"], lv["quantity"]) for lv in book[side]} for side in ("bids", "asks")}
        assert all(len(levels) == 15 for levels in sides.values())
        if previous is not None:
            shares += [len(sides[side] - previous[side]) / 15 for side in sides]
        previous = sides
    return sum(shares) / len(shares)


def test_the_market_keeps_a_book_whose_top_changes_by_about_a_fifth_between_pushes() -> None:
    from app.simulator.market import Activity

    quiet, busy = _churn(Activity()), _churn(Activity.busy())
    print(f"top-15 levels changed between pushes 1.5 s apart: {quiet:.0%} by default, {busy:.0%} busy")
    assert 0.12 <= quiet <= 0.3
    assert busy >= 0.45


def test_the_market_is_seeded_and_the_accounts_fills_are_its_matches() -> None:
    import random

    from app.simulator.account import DemoTrader
    from app.simulator.market import Market

    def run(seed: int) -> tuple[list[bytes], list[tuple[str, bytes]], Market]:
        market = Market(seed=seed)
        market.symbols["BTC_USD"].history = []
        trader = DemoTrader(market, ACCOUNT.email, ACCOUNT.user_no, random.Random(seed))
        now, books, pushes = 1_800_000_000_000, [], []
        for step in range(2000):
            now += 100
            market.tick(now, 2.0, 0.1)
            pushes += trader.step(now, 0.1)
            if step % 10 == 0:
                books.append(market.orderbook("BTC_USD", "0.01", now))
        return books, pushes, market

    books, pushes, market = run(3)
    assert run(3)[:2] == (books, pushes)  # the same seed, the same market
    history = {(format(t.price, "f"), format(t.quantity, "f"), t.ts) for t in market.symbols["BTC_USD"].history or []}
    fills = [json.loads(payload) for kind, payload in pushes if kind == "fills"]
    btc = [f for f in fills if f["symbol"] == "BTC/USD"]
    assert len(btc) >= 5 and {f["matchType"] for f in btc} == {"MAKER", "TAKER"}
    for fill in btc:
        if fill["matchType"] == "MAKER":  # a resting order of the account was hit by a trade
            assert (fill["price"], fill["quantity"], int(fill["utcDeal"])) in history


async def books_published(books_together: bool) -> dict[str, list[int]]:
    """The tick (the market's clock, ms) in which each order book was
    published over 1.3 s, books every 0.5 s."""
    sim = Simulator(BrokerPorts(tcp=free_port(), ws=free_port()), seed=2, extra_symbols=3, book_interval=0.5,
                    books_together=books_together)
    moments: dict[str, list[int]] = {}

    async def record(topic: str, payload: bytes) -> None:
        if "orderBook" in topic:
            moments.setdefault(topic, []).append(sim.market.now_ms)

    sim._publish = record  # type: ignore[method-assign]  # no broker: only when it publishes
    task = asyncio.create_task(sim._run())
    await asyncio.sleep(1.3)
    task.cancel()
    return moments


async def test_books_together_are_pushed_at_the_same_moments_and_by_default_each_at_its_own() -> None:
    together = await books_published(True)
    assert len(together) >= 4 and all(len(times) >= 2 for times in together.values())
    first, *others = together.values()
    for times in others:  # one burst after another: every book in the same tick as the first
        assert times == first[: len(times)] and len(first) - len(times) <= 1
    apart = await books_published(False)
    starts = sorted(times[0] for times in apart.values())
    assert starts[-1] - starts[0] >= 100  # each at a phase of its own (ms)
