"""The committed OpenAPI file is the app's own, and the running app keeps to it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.cli import openapi_text
from tests.support import ENV, REPO, GatewayProcess, Mosquitto, Publisher, sample, wait_for

pytestmark = pytest.mark.processes

SPEC = REPO / "openapi" / "openapi.json"


def test_the_committed_openapi_file_is_up_to_date() -> None:
    assert SPEC.read_text() == openapi_text(), "openapi/openapi.json is stale: run `make openapi`"


def test_the_stream_route_is_described() -> None:
    spec = json.loads(SPEC.read_text())
    stream = spec["paths"]["/v1/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    for name in ("orderbook", "depth", "kline", "trade", "assets", "order", "fill", "status", "reset"):
        assert f"`{name}`" in stream["responses"]["200"]["description"], name
    assert {p["name"] for p in stream["parameters"]} >= {"channels", "last_event_id", "access_token"}
    assert stream["responses"]["429"]["content"]["application/problem+json"]


def test_the_websocket_endpoint_and_its_messages_are_described() -> None:
    spec = json.loads(SPEC.read_text())
    ws = spec["paths"]["/v1/ws"]["get"]
    assert "101" in ws["responses"] and "last_event_id" in ws["description"]
    schemas = spec["components"]["schemas"]
    assert schemas["WsSubscribe"]["properties"]["op"]["const"] == "subscribe"
    assert {"WsUnsubscribe", "WsSubscribed", "WsUnsubscribed", "WsEvent", "WsError"} <= schemas.keys()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("schemathesis")
    broker = Mosquitto(workdir)
    broker.start()
    publisher = Publisher(broker.tcp_port)
    gw = GatewayProcess(workdir, {
        "COINSUPER_URL": broker.url("tcp"),
        "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01,trades:BTC_USD,depth:BTC_USD,kline:BTC_USD:1m",
        "GATEWAY_WAIT_DEFAULT_MS": "0",
        "GATEWAY_WAIT_MAX_MS": "50",
        "GATEWAY_IDLE_RELEASE_S": "1",
        "GATEWAY_LOG_LEVEL": "warning",
    })
    try:
        wait_for(lambda: all(c["link_state"] == "up" for c in gw.channels().values()), 15, "links up")
        for topic, name in (("/api/ws/v1/market/orderBook/BTC_USD/0.01", "orderBook_BTC_USD_0.01.json"),
                            ("/api/ws/v1/market/tickers/BTC_USD", "tickers_BTC_USD.json"),
                            ("/api/ws/v1/market/depth/BTC_USD", "depth_BTC_USD.json"),
                            ("/api/ws/v1/market/kline/BTC_USD/60000", "kline_BTC_USD_60000.json")):
            publisher.publish(ENV + topic, sample(name))
        wait_for(lambda: gw.http.get("/v1/kline/BTC_USD?range=1m").status_code == 200, 10, "data")
        yield gw.base
    finally:
        gw.stop()
        publisher.close()
        broker.kill()


schema = schemathesis.openapi.from_path(str(SPEC))


@pytest.fixture(autouse=True)
def _not_under_xdist() -> None:
    """schemathesis gives every operation of the schema the same node id, and
    pytest-xdist runs one test per id: under workers this module would test
    one route of thirteen. make test runs it on its own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("tests/test_openapi.py runs without -n (make test runs it apart)")


@schemathesis.check
def no_server_error(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No 5xx, but for the contract's own 503 "no data yet": a problem with Retry-After."""
    if response.status_code < 500:
        return
    headers = {key.lower(): value for key, value in response.headers.items()}
    contract_503 = (
        response.status_code == 503
        and "retry-after" in headers
        and str(headers.get("content-type", [""])[0]).startswith("application/problem+json")
        and response.json()["title"] == "No data yet"
    )
    if not contract_503:
        raise AssertionError(f"server error {response.status_code}: {response.text[:200]}")


@schema.exclude(path_regex="^/v1/(stream|ws)$").parametrize()
def test_the_running_app_keeps_to_its_schema(case: schemathesis.Case, running: str) -> None:
    case.call_and_validate(
        base_url=running,
        checks=[no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )


def test_the_contracts_503_is_not_a_server_error(running: str) -> None:
    case = schema["/v1/depth/{symbol}"]["GET"].Case(path_parameters={"symbol": "QQ_USD"}, query={"wait": "0"})
    response = case.call_and_validate(base_url=running, checks=[no_server_error, response_schema_conformance])
    assert response.status_code == 503
