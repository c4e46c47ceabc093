"""REST snapshot routes, /v1/channels, and the health probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import HTTPConnection

from app.domain.channels import Channel, Kind, normalize_symbol
from app.domain.errors import InvalidInput, NotConfigured, NotReady
from app.http import schemas
from app.http.auth import TokenCheck
from app.ports import Ports, Reading

router = APIRouter()

JSON = "application/json"
MAX_LIMIT = 1000


def ports_of(request: HTTPConnection) -> Ports:
    ports: Ports = request.app.state.ports
    return ports


async def _ports(request: Request) -> Ports:
    # Dependencies are async: FastAPI runs a plain def in a thread pool, which
    # cost the snapshot route two thirds of its rate (bench/rest.py).
    return ports_of(request)


PortsDep = Annotated[Ports, Depends(_ports)]


def tokens_of(request: HTTPConnection) -> TokenCheck:
    tokens: TokenCheck = request.app.state.tokens
    return tokens


def public_access(request: HTTPConnection) -> None:
    """Public routes are open unless GATEWAY_REQUIRE_TOKEN asks for a token."""
    if ports_of(request).settings.gateway_require_token:
        tokens_of(request).require(request)


def private_access(request: HTTPConnection, *, allow_query: bool = False) -> None:
    """Private routes: 404 while the private feed is not configured, then 401
    without a valid token."""
    if not ports_of(request).report.private_enabled():
        raise NotConfigured(
            "the private feed (assets, orders, fills) is not configured: it needs "
            "COINSUPER_ACCESS_KEY, COINSUPER_SECRET_KEY and COINSUPER_EMAIL"
        )
    tokens_of(request).require(request, allow_query=allow_query)


async def _public(request: Request) -> None:
    public_access(request)


async def _private(request: Request) -> None:
    private_access(request)


Public = [Depends(_public)]
Private = [Depends(_private)]


def parse_int(name: str, text: str | None, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; a clear 400 otherwise."""
    if text is None or text == "":
        return default
    text = text.strip()
    # Length first: int() refuses more than 4,300 digits, which would be a 500.
    if not (len(text) <= 18 and text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise InvalidInput(
            name, f"'{text[:20]}' is not allowed", f"an integer from {low} to {high}"
        )
    return int(text)


def required(name: str, text: str | None, allowed: str) -> str:
    if text is None or not text.strip():
        raise InvalidInput(name, "the parameter is missing", allowed)
    return text


Render = Callable[[Reading], bytes]
# What a snapshot route answers: its channel, and how its body is made of a reading.
Target = tuple[Channel, Render]


def wait_ms(ports: Ports, wait: str | None) -> int:
    """The ``wait`` parameter, in ms, within its cap."""
    settings = ports.settings
    return parse_int(
        "wait",
        wait,
        default=settings.gateway_wait_default_ms,
        low=0,
        high=settings.gateway_wait_max_ms,
    )


async def answer(
    request: Request,
    ports: Ports,
    target: Target,
    wait: str | None,
) -> Response:
    """The common path of every snapshot route: subscribe on demand, wait
    briefly for the first push, honour ``If-None-Match``, serve stored bytes."""
    channel, render = target
    waiting_ms = wait_ms(ports, wait)
    if not channel.is_private:
        ports.demand.demand(channel)
    view = ports.view
    reading = view.read(channel)
    if reading is None and await view.wait_for_data(channel, waiting_ms / 1000):
        reading = view.read(channel)
    if reading is None:
        status, reason = view.status(channel)
        why = f" (upstream {status}: {reason})" if reason else f" (upstream {status})"
        raise NotReady(f"{channel.name} has no data yet{why}; try again shortly", retry_after=1)
    etag = reading.etag
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    return Response(render(reading), media_type=JSON, headers=headers)


def _snapshot(reading: Reading) -> bytes:
    return reading.snapshot()


# Each snapshot route's target, of its parameters as they came (also
# answered by the connection layer: app/http/fast.py).


def orderbook_target(symbol: str, step: str | None) -> Target:
    return Channel.orderbook(symbol, required("step", step, "a step such as 0.01")), _snapshot


def depth_target(symbol: str) -> Target:
    return Channel.depth(symbol), _snapshot


def kline_target(symbol: str, range_: str | None) -> Target:
    return Channel.kline(symbol, required("range", range_, "a range such as 1m")), _snapshot


def klines_target(symbol: str, range_: str | None, limit: str | None) -> Target:
    channel = Channel.kline(symbol, required("range", range_, "a range such as 1m"))
    count = parse_int("limit", limit, default=100, low=1, high=MAX_LIMIT)
    return channel, lambda reading: reading.candles(count)


def trades_target(symbol: str, limit: str | None) -> Target:
    count = parse_int("limit", limit, default=50, low=1, high=MAX_LIMIT)
    return Channel.trades(symbol), lambda reading: reading.trades(count)


def assets_target() -> Target:
    return Channel(Kind.ASSETS), _snapshot


ORDER_STATES = ("new", "cancel")


def orders_target(state: str | None, symbol: str | None) -> Target:
    if state is not None and state.lower() not in ORDER_STATES:
        raise InvalidInput(
            "state", f"'{state[:20]}' is not an order state", "one of " + ", ".join(ORDER_STATES)
        )
    wanted_state = state.lower() if state else None
    wanted_symbol = normalize_symbol(symbol).replace("_", "/") if symbol else None
    return Channel(Kind.ORDERS), lambda reading: reading.orders(wanted_state, wanted_symbol)


def fills_target(limit: str | None) -> Target:
    count = parse_int("limit", limit, default=100, low=1, high=MAX_LIMIT)
    return Channel(Kind.FILLS), lambda reading: reading.fills(count)


def etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


Wait = Annotated[str | None, Query(description="ms to wait for a first push (capped)")]


@router.get(
    "/v1/orderbook/{symbol:path}",
    tags=["market"],
    dependencies=Public,
    responses=schemas.snapshot(schemas.OrderBook, 401),
)
async def orderbook(
    request: Request,
    ports: PortsDep,
    symbol: str,
    step: Annotated[str | None, Query(description="aggregation step, e.g. 0.01")] = None,
    wait: Wait = None,
) -> Response:
    """Latest order book of a symbol at one aggregation step."""
    return await answer(request, ports, orderbook_target(symbol, step), wait)


@router.get(
    "/v1/depth/{symbol:path}",
    tags=["market"],
    dependencies=Public,
    responses=schemas.snapshot(schemas.Depth, 401),
)
async def depth(request: Request, ports: PortsDep, symbol: str, wait: Wait = None) -> Response:
    """Latest depth chart (cumulative quantities) of a symbol."""
    return await answer(request, ports, depth_target(symbol), wait)


Range = Annotated[str | None, Query(alias="range", description="candle length: 1m … 1w")]


@router.get(
    "/v1/kline/{symbol:path}",
    tags=["market"],
    dependencies=Public,
    responses=schemas.snapshot(schemas.Candle, 401),
)
async def kline(
    request: Request, ports: PortsDep, symbol: str, range_: Range = None, wait: Wait = None
) -> Response:
    """The current candle of a symbol and range."""
    return await answer(request, ports, kline_target(symbol, range_), wait)


@router.get(
    "/v1/klines/{symbol:path}",
    tags=["market"],
    dependencies=Public,
    responses=schemas.snapshot(list[schemas.Candle], 401),
)
async def klines(
    request: Request,
    ports: PortsDep,
    symbol: str,
    range_: Range = None,
    limit: Annotated[str | None, Query(description="newest N candles, 1–1000")] = None,
    wait: Wait = None,
) -> Response:
    """Candles seen since start (the current one last), oldest first."""
    return await answer(request, ports, klines_target(symbol, range_, limit), wait)


@router.get(
    "/v1/trades/{symbol:path}",
    tags=["market"],
    dependencies=Public,
    responses=schemas.snapshot(list[schemas.Trade], 401),
)
async def trades(
    request: Request,
    ports: PortsDep,
    symbol: str,
    limit: Annotated[str | None, Query(description="newest N trades, 1–1000")] = None,
    wait: Wait = None,
) -> Response:
    """Distinct trades of a symbol, newest first."""
    return await answer(request, ports, trades_target(symbol, limit), wait)


@router.get(
    "/v1/account/assets",
    tags=["account"],
    dependencies=Private,
    responses=schemas.snapshot(schemas.Assets, 401),
)
async def account_assets(request: Request, ports: PortsDep, wait: Wait = None) -> Response:
    """Balances per currency (exact decimals), as last pushed."""
    return await answer(request, ports, assets_target(), wait)


@router.get(
    "/v1/account/orders",
    tags=["account"],
    dependencies=Private,
    responses=schemas.snapshot(list[schemas.Order], 401),
)
async def account_orders(
    request: Request,
    ports: PortsDep,
    state: Annotated[str | None, Query(description="new or cancel")] = None,
    symbol: Annotated[str | None, Query(description="e.g. BTC_USD")] = None,
    wait: Wait = None,
) -> Response:
    """The newest state of each order seen, most recently updated first."""
    return await answer(request, ports, orders_target(state, symbol), wait)


@router.get(
    "/v1/account/fills",
    tags=["account"],
    dependencies=Private,
    responses=schemas.snapshot(list[schemas.Fill], 401),
)
async def account_fills(
    request: Request,
    ports: PortsDep,
    limit: Annotated[str | None, Query(description="newest N fills, 1–1000")] = None,
    wait: Wait = None,
) -> Response:
    """Fills, unique by deal number, newest first."""
    return await answer(request, ports, fills_target(limit), wait)


@router.get(
    "/v1/channels",
    tags=["operations"],
    dependencies=Public,
    responses={200: {"model": schemas.ChannelReport}, **schemas.problems(401)},
)
async def channels(ports: PortsDep) -> JSONResponse:
    """Every channel subscribed upstream: status, last update, counts, subscribers."""
    return JSONResponse(ports.report.report(ports.report.now()))


@router.get(
    "/v1/cluster",
    tags=["operations"],
    dependencies=Public,
    responses={200: {"model": schemas.Cluster}, **schemas.problems(401, 503)},
)
async def cluster(ports: PortsDep) -> JSONResponse:
    """This replica, its role, the leader and every replica seen lately."""
    return JSONResponse(await ports.report.cluster())


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, text format."""
    body = generate_latest(request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", tags=["operations"], responses={200: {"model": schemas.Health}})
async def healthz() -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    tags=["operations"],
    responses={
        200: {"model": schemas.Readiness},
        503: {"model": schemas.Readiness, "description": "Not ready"},
    },
)
async def readyz(ports: PortsDep) -> JSONResponse:
    """Readiness: upstream up and data fresh on every configured channel."""
    ready, problems = ports.report.readiness(ports.report.now())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "problems": problems},
        status_code=200 if ready else 503,
    )
