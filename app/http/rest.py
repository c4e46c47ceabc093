"""REST snapshot routes, /v1/channels, and the health probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from app.channels import Channel
from app.errors import InvalidInput, NotReady
from app.gateway import Gateway, now_ms
from app.store import ChannelState

router = APIRouter()

JSON = "application/json"
MAX_LIMIT = 1000


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


def parse_int(name: str, text: str | None, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; a clear 400 otherwise."""
    if text is None or text == "":
        return default
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise InvalidInput(
            name, f"'{text[:20]}' is not allowed", f"an integer from {low} to {high}"
        )
    return int(text)


def required(name: str, text: str | None, allowed: str) -> str:
    if text is None or not text.strip():
        raise InvalidInput(name, "the parameter is missing", allowed)
    return text


async def answer(
    request: Request,
    gateway: Gateway,
    channel: Channel,
    render: Callable[[ChannelState, int], bytes],
    wait: str | None,
) -> Response:
    """The common path of every snapshot route: subscribe on demand, wait
    briefly for the first push, honour ``If-None-Match``, serve stored bytes."""
    settings = gateway.settings
    wait_ms = parse_int(
        "wait",
        wait,
        default=settings.gateway_wait_default_ms,
        low=0,
        high=settings.gateway_wait_max_ms,
    )
    gateway.registry.demand(channel)
    hub = gateway.hub
    state = hub.state(channel)
    if (state is None or not state.has_data) and await hub.wait_for_data(channel, wait_ms / 1000):
        state = hub.state(channel)
    if state is None or not state.has_data:
        status, reason = gateway.status(channel, now_ms())
        why = f" (upstream {status}: {reason})" if reason else f" (upstream {status})"
        raise NotReady(f"{channel.name} has no data yet{why}; try again shortly", retry_after=1)
    now = now_ms()
    etag = hub.etag(state, now)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    return Response(render(state, now), media_type=JSON, headers=headers)


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


Wait = Annotated[str | None, Query(description="ms to wait for a first push (capped)")]


@router.get("/v1/orderbook/{symbol:path}", tags=["market"])
async def orderbook(
    request: Request,
    gateway: GatewayDep,
    symbol: str,
    step: Annotated[str | None, Query(description="aggregation step, e.g. 0.01")] = None,
    wait: Wait = None,
) -> Response:
    """Latest order book of a symbol at one aggregation step."""
    channel = Channel.orderbook(symbol, required("step", step, "a step such as 0.01"))
    return await answer(request, gateway, channel, gateway.hub.snapshot, wait)


@router.get("/v1/depth/{symbol:path}", tags=["market"])
async def depth(request: Request, gateway: GatewayDep, symbol: str, wait: Wait = None) -> Response:
    """Latest depth chart (cumulative quantities) of a symbol."""
    return await answer(request, gateway, Channel.depth(symbol), gateway.hub.snapshot, wait)


Range = Annotated[str | None, Query(alias="range", description="candle length: 1m … 1w")]


@router.get("/v1/kline/{symbol:path}", tags=["market"])
async def kline(
    request: Request, gateway: GatewayDep, symbol: str, range_: Range = None, wait: Wait = None
) -> Response:
    """The current candle of a symbol and range."""
    channel = Channel.kline(symbol, required("range", range_, "a range such as 1m"))
    return await answer(request, gateway, channel, gateway.hub.snapshot, wait)


@router.get("/v1/klines/{symbol:path}", tags=["market"])
async def klines(
    request: Request,
    gateway: GatewayDep,
    symbol: str,
    range_: Range = None,
    limit: Annotated[str | None, Query(description="newest N candles, 1–1000")] = None,
    wait: Wait = None,
) -> Response:
    """Candles seen since start (the current one last), oldest first."""
    channel = Channel.kline(symbol, required("range", range_, "a range such as 1m"))
    count = parse_int("limit", limit, default=100, low=1, high=MAX_LIMIT)
    hub = gateway.hub
    return await answer(
        request, gateway, channel, lambda s, now: hub.candle_answer(s, now, count), wait
    )


@router.get("/v1/trades/{symbol:path}", tags=["market"])
async def trades(
    request: Request,
    gateway: GatewayDep,
    symbol: str,
    limit: Annotated[str | None, Query(description="newest N trades, 1–1000")] = None,
    wait: Wait = None,
) -> Response:
    """Distinct trades of a symbol, newest first."""
    count = parse_int("limit", limit, default=50, low=1, high=MAX_LIMIT)
    hub = gateway.hub
    return await answer(
        request,
        gateway,
        Channel.trades(symbol),
        lambda s, now: hub.trade_answer(s, now, count),
        wait,
    )


@router.get("/v1/channels", tags=["operations"])
async def channels(gateway: GatewayDep) -> JSONResponse:
    """Every channel subscribed upstream: status, last update, counts, subscribers."""
    registry = gateway.registry
    return JSONResponse(
        {
            "channels": gateway.channel_report(now_ms()),
            "links": [link.describe() for link in registry.links.values()],
            "unknown_topic_messages": registry.unknown_messages,
            "open_streams": gateway.open_streams,
        }
    )


@router.get("/healthz", tags=["operations"])
async def healthz() -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", tags=["operations"])
async def readyz(gateway: GatewayDep) -> JSONResponse:
    """Readiness: upstream up and data fresh on every configured channel."""
    ready, problems = gateway.readiness(now_ms())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "problems": problems},
        status_code=200 if ready else 503,
    )
