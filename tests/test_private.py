"""The private feed: signed logins, exact balances, de-duplicated orders and
fills, and the bearer tokens that guard them."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.asgi import create_app
from app.cli import server_config
from app.config import load_settings
from app.logs import RedactSecrets
from app.simulator import Simulator
from app.simulator.broker import BrokerPorts, DemoAccount
from tests.support import (
    ACCESS_KEY,
    EMAIL,
    ENV,
    EventStream,
    Mosquitto,
    Publisher,
    free_port,
    gateway,
    sample,
    wait_for,
)

ACCOUNT = DemoAccount()
TOKEN = "tok-" + "q" * 24
ASSET_TOPIC = f"{ENV}/api/ws/personal/v1/asset/change/{EMAIL}"


@asynccontextmanager
async def simulated(faults: float = 0.0) -> AsyncIterator[Simulator]:
    sim = Simulator(BrokerPorts(tcp=free_port(), ws=free_port()), account=ACCOUNT, seed=3, speed=8,
                    private_faults=faults)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@asynccontextmanager
async def served(sim: Simulator, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in this event loop, on a free port, following the simulator."""
    settings = load_settings(
        **{
            "coinsuper_url": f"mqtt://127.0.0.1:{sim.ports.tcp}",
            "coinsuper_access_key": ACCOUNT.access_key,
            "coinsuper_secret_key": ACCOUNT.secret_key,
            "coinsuper_email": ACCOUNT.email,
            "gateway_tokens": TOKEN,
            "coinsuper_reconnect_min_s": 0.5,
            "coinsuper_reconnect_max_s": 4,
            **overrides,
        }
    )
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=port))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        try:
            yield client
        finally:
            server.should_exit = True
            await task


async def until(check: object, timeout: float, what: str) -> object:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await check()  # type: ignore[operator]
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def private_links(client: httpx.AsyncClient) -> dict[str, object]:
    links = (await client.get("/v1/channels")).json()["links"]
    return next(link for link in links if link["name"] == "private")


async def test_a_correct_signature_connects_and_private_data_flows() -> None:
    async with simulated() as sim, served(sim) as client:
        await until(lambda: _status(client, "fills", "live"), 10, "the private link up")
        body = await until(lambda: _ok(client, "/v1/account/assets"), 15, "balances")
        assert set(body["data"]["balances"]) == {"BTC", "ETH", "USD"}
        assert body["data"]["user_no"] == ACCOUNT.user_no
        fills = (await client.get("/v1/account/fills")).json()
        assert fills["channel"] == "fills" and isinstance(fills["data"], list)


async def _ok(client: httpx.AsyncClient, route: str) -> object:
    response = await client.get(route + ("&" if "?" in route else "?") + "wait=0")
    return response.status_code == 200 and response.json()


async def _status(client: httpx.AsyncClient, channel: str, status: str) -> bool:
    channels = {c["channel"]: c for c in (await client.get("/v1/channels")).json()["channels"]}
    return channel in channels and channels[channel]["status"] == status


async def test_a_wrong_secret_is_refused_and_retried_with_backoff() -> None:
    async with simulated() as sim, served(sim, coinsuper_secret_key="not-the-secret") as client:
        await until(lambda: _status(client, "assets", "failed"), 10, "the private channels failed")
        report = {c["channel"]: c for c in (await client.get("/v1/channels")).json()["channels"]}
        assert "refused" in report["assets"]["reason"].lower() or "not authori" in report["assets"]["reason"].lower()
        first = (await private_links(client))["attempts"]
        await asyncio.sleep(8)
        attempts = (await private_links(client))["attempts"] - first
        # Backoff 0.5 s doubling to a 4 s cap (jittered to half): a tight loop
        # would make hundreds of attempts in 8 s; backoff makes a handful.
        print(f"{attempts} login attempts in 8 s; reason: {report['assets']['reason']}")
        assert 1 <= attempts <= 6, attempts
        problem = (await client.get("/v1/account/assets?wait=0")).json()
        assert problem["status"] == 503 and "failed" in problem["detail"]


async def test_duplicated_dropped_and_reordered_pushes_make_no_duplicates() -> None:
    async with simulated(faults=0.15) as sim, served(sim) as client:
        await until(lambda: _status(client, "orders", "live"), 10, "the private link up")
        await until(lambda: _count(sim, "fills", 8), 60, "at least 8 fills sent")
        await sim.pause()  # nothing more is published...
        await asyncio.sleep(1)  # ...and what was has arrived
        sent = list(sim.faults.sent)
        fill_topic, order_topic = sim.private_topics["fills"], sim.private_topics["orders"]
        sent_fills = [json.loads(p) for t, p in sent if t == fill_topic]
        sent_orders = [json.loads(p) for t, p in sent if t == order_topic]
        assert len(sent_fills) > len({f["dealNo"] for f in sent_fills}) or len(sent_orders) > len(
            {(o["orderNo"], o["utcUpdate"], o["state"]) for o in sent_orders}
        ), "the simulator injected duplicates"

        fills = (await client.get("/v1/account/fills?limit=1000")).json()["data"]
        deal_numbers = [f["deal_no"] for f in fills]
        assert len(deal_numbers) == len(set(deal_numbers))
        assert set(deal_numbers) == {f["dealNo"] for f in sent_fills}

        orders = {o["order_no"]: o for o in (await client.get("/v1/account/orders")).json()["data"]}
        newest: dict[str, dict[str, object]] = {}
        for order in sent_orders:
            held = newest.get(order["orderNo"])
            if held is None or (order["utcUpdate"], order["state"] == "CANCEL") > (held["utcUpdate"], held["state"] == "CANCEL"):
                newest[order["orderNo"]] = order
        print(f"{len(sent_fills)} fill pushes sent for {len({f['dealNo'] for f in sent_fills})} deals; "
              f"{len(sent_orders)} order pushes for {len(newest)} orders")
        assert orders.keys() == newest.keys()
        for number, order in newest.items():
            assert orders[number]["state"] == str(order["state"]).lower()
            assert orders[number]["updated_ts"] == order["utcUpdate"]


async def _count(sim: Simulator, kind: str, n: int) -> bool:
    topic = sim.private_topics[kind]
    return len({p for t, p in sim.faults.sent if t == topic}) >= n


@pytest.mark.processes
def test_30_decimal_balances_come_out_exact_by_rest_and_sse(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, anonymous=True)
    broker.start()
    publisher = Publisher(broker.tcp_port)
    env = {
        "COINSUPER_URL": broker.url("tcp"),
        "COINSUPER_SECRET_KEY": "the-secret-key-123",
        "GATEWAY_TOKENS": TOKEN,
    }
    try:
        with gateway(tmp_path, env) as gw:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            wait_for(lambda: gw.http.get("/v1/account/fills", headers=headers).status_code == 200, 15, "private up")
            stream = EventStream(f"{gw.base}/v1/stream?channels=assets&access_token={TOKEN}")
            raw = sample("asset_change.json")
            publisher.publish(ASSET_TOPIC, raw)
            body = wait_for(lambda: (r := gw.http.get("/v1/account/assets", headers=headers)).status_code == 200
                            and r.json(), 10, "balances")
            event = wait_for(lambda: stream.named("assets"), 10, "an assets event")[-1]
            source = json.loads(raw, parse_float=Decimal)
            for answer in (body, event):
                assert answer["exchange_ts"] == 1542786802283
                for entry in source["asset"]:
                    balance = answer["data"]["balances"][entry["currency"]]
                    assert Decimal(balance["total"]) == entry["total"]
                    assert Decimal(balance["available"]) == entry["available"]
                    assert balance["updated_ts"] == entry["utcUpdate"]
            btc = body["data"]["balances"]["BTC"]
            assert btc["available"] == "0.738763122563248000000000000000"  # every digit, not a float's
            stream.close()
        # The private login as Mosquitto saw it: client id = access key, user api_private.
        assert re.search(rf"as {ACCESS_KEY} \(p2, c1, k60, u'api_private'\)", broker.log_text())
    finally:
        publisher.close()
        broker.kill()


@pytest.mark.processes
def test_tokens_guard_private_rest_and_streams_and_never_reach_a_log(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, anonymous=True)
    broker.start()
    secret_key = "the-secret-key-456"
    env = {
        "COINSUPER_URL": broker.url("tcp"),
        "COINSUPER_SECRET_KEY": secret_key,
        "GATEWAY_TOKENS": f"other-token-1,{TOKEN}",
        "GATEWAY_LOG_LEVEL": "debug",  # every record of the session is written
    }
    try:
        with gateway(tmp_path, env) as gw:
            url = "/v1/account/fills"
            wait_for(lambda: gw.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200,
                     15, "private up")
            for route in ("/v1/account/assets", "/v1/account/orders", "/v1/account/fills"):
                missing = gw.http.get(route)
                assert missing.status_code == 401
                assert missing.headers["www-authenticate"].startswith("Bearer")
                assert missing.headers["content-type"] == "application/problem+json"
                assert gw.http.get(route, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
                assert gw.http.get(route, params={"access_token": TOKEN}).status_code == 401  # header only on REST
            assert gw.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert gw.http.get("/v1/account/orders?state=open",
                               headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 400

            assert gw.http.get("/v1/stream?channels=fills").status_code == 401
            assert gw.http.get("/v1/stream?channels=fills&access_token=wrong").status_code == 401
            with_header = EventStream(f"{gw.base}/v1/stream?channels=orders,fills",
                                      headers={"Authorization": f"Bearer {TOKEN}"})
            with_query = EventStream(f"{gw.base}/v1/stream?channels=assets,fills&access_token={TOKEN}")
            assert with_header.status == 200 and with_query.status == 200
            with_header.close()
            with_query.close()
            channels = gw.http.get("/v1/channels").text
        log = gw.log_text()
        assert TOKEN not in log and secret_key not in log and "other-token-1" not in log
        # The signed password is e-mail,ts,md5(...): no such run anywhere.
        assert not re.search(re.escape(EMAIL) + r",\d{13},[0-9a-f]{32}", log)
        assert "access_token=[redacted]" in log  # the access log line was written, scrubbed
        assert secret_key not in channels and TOKEN not in channels
    finally:
        broker.kill()


def test_the_log_filter_scrubs_query_tokens_and_secrets() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, '%s "GET %s"', ("1.2.3.4", "/v1/stream?channels=a&access_token=abc123&x=1"), None)
    scrub = RedactSecrets(["very-secret"])
    scrub.filter(record)
    assert record.getMessage() == '1.2.3.4 "GET /v1/stream?channels=a&access_token=[redacted]&x=1"'
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s, Bearer abc.def", ("very-secret",), None)
    scrub.filter(record)
    assert record.getMessage() == "key [redacted], Bearer [redacted]"


@pytest.mark.parametrize("route", ["/v1/account/assets", "/v1/stream?channels=orders"])
@pytest.mark.processes
def test_private_routes_without_a_private_feed_are_404(tmp_path: Path, route: str) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        with gateway(tmp_path, {"COINSUPER_URL": broker.url("tcp"), "GATEWAY_TOKENS": TOKEN}) as gw:
            response = gw.http.get(route, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 404
            assert "not configured" in response.json()["detail"]
    finally:
        broker.kill()
