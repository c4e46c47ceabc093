"""The ASGI application: routes, problems, and the gateway's life cycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from app import __version__
from app.config import Settings
from app.http import problems, rest, schemas, stream, ws
from app.http.auth import TokenCheck
from app.http.fast import FastRoutes
from app.metrics import GatewayCollector, GcPauses, LabelPolicy, RequestMetrics
from app.ports import Ports, Service
from app.protocols.http import ConnectionGuard, Limits, connection_cap, raise_fd_limit

STATIC = Path(__file__).resolve().parent.parent / "static"
DESCRIPTION = """Coinsuper's MQTT push feed (order books, depth charts, candles, trades, and
an account's balances, orders and fills) as REST snapshots and Server-Sent Events.

Prices, quantities and balances are decimal strings equal to what the exchange
sent. Errors are `application/problem+json` (RFC 9457). Private routes need a
bearer token (streams also take `access_token` in the query). When
`GATEWAY_REQUIRE_TOKEN` is set, public routes need one too.

On any route, the server itself answers a problem and closes the connection
when a limit of the connection is passed: `414` (request line over
`GATEWAY_MAX_REQUEST_LINE`), `431` (request head over
`GATEWAY_MAX_HEADER_BYTES`), `408` (no complete head within
`GATEWAY_HEADER_TIMEOUT_S`), `429` (open connections of one address) and `503`
(open connections, with `Retry-After`)."""
TAGS = [
    {"name": "market", "description": "Public market data, subscribed upstream on first demand"},
    {"name": "account", "description": "The configured account's private data"},
    {"name": "streams", "description": "Server-Sent Events"},
    {"name": "operations", "description": "Health, readiness, channel states and metrics"},
]


def build_app(settings: Settings, ports: Ports, service: Service) -> FastAPI:
    """Build the app on the gateway's ports; ``service`` (the gateway) starts
    and stops with it (app/asgi.py wires the two)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        app.state.gc_pauses.install()
        try:
            yield
        finally:
            app.state.gc_pauses.uninstall()
            await service.stop()

    app = FastAPI(
        title="coinsuper-gateway",
        version=__version__,
        summary="Coinsuper's MQTT push feed as REST snapshots and Server-Sent Events",
        lifespan=lifespan,
        # Any route: the connection layer's answers (app/protocols/http.py).
        responses=schemas.connection_limits(),
    )
    app.state.ports = ports
    app.state.connections = ConnectionGuard(limits_of(settings))
    app.state.tokens = TokenCheck(settings.tokens)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID", "If-None-Match"],
            expose_headers=["ETag", "Retry-After"],
        )
    registry = CollectorRegistry(auto_describe=True)
    app.state.gc_pauses = GcPauses()
    registry.register(
        GatewayCollector(
            ports,
            LabelPolicy(settings.metric_symbols),
            app.state.connections,
            app.state.gc_pauses,
        )
    )
    app.state.metrics = registry
    requests = RequestMetrics.histogram_of(registry)
    app.add_middleware(RequestMetrics, histogram=requests, node=ports.report.node)
    if settings.gateway_fast_routes:
        app.state.connections.fast = FastRoutes(
            ports, app.state.tokens, requests, cors=bool(settings.cors_origins)
        )
    problems.install(app)
    app.include_router(rest.router)
    app.include_router(stream.router)
    app.include_router(ws.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get(
        "/",
        tags=["operations"],
        response_class=FileResponse,
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    )
    async def page() -> FileResponse:
        """The live page: order book, depth, candles, trades, channel states."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def limits_of(settings: Settings) -> Limits:
    """The connection limits of the settings; raises the open-file limit first,
    since the cap on connections is kept below it."""
    return Limits(
        max_connections=connection_cap(settings.gateway_max_connections, raise_fd_limit()),
        max_per_address=settings.gateway_max_connections_per_address,
        max_request_line=settings.gateway_max_request_line,
        max_header_bytes=settings.gateway_max_header_bytes,
        header_timeout_s=settings.gateway_header_timeout_s,
        trusted=tuple(ip_network(p, strict=False) for p in settings.trusted_proxies),
    )


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document: FastAPI's, plus the problem schema and bearer auth."""
    spec = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=DESCRIPTION,
        routes=app.routes,
        tags=TAGS,
    )
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = schemas.Problem.model_json_schema()
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in spec["paths"].items():
        # Invalid parameters are answered 400 with a problem, never FastAPI's 422.
        item["get"]["responses"].pop("422", None)
        if path.startswith("/v1/account/"):
            item["get"]["security"] = [{"bearer": []}]
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    # OpenAPI has no WebSocket operation: the upgrade is described as a GET,
    # and its messages as schemas.
    for model in (
        schemas.WsSubscribe,
        schemas.WsUnsubscribe,
        schemas.WsSubscribed,
        schemas.WsUnsubscribed,
        schemas.WsEvent,
    ):
        components["schemas"][model.__name__] = model.model_json_schema()
    error = schemas.WsError.model_json_schema()
    components["schemas"]["WsError"] = error
    spec["paths"]["/v1/ws"] = {
        "get": {
            "tags": ["streams"],
            "summary": "Follow channels over a WebSocket",
            "description": schemas.WS_DESCRIPTION,
            "operationId": "websocket_stream_v1_ws_get",
            "parameters": [
                {
                    "name": "access_token",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "bearer token, for private channels",
                },
            ],
            "responses": {"101": {"description": "Switching protocols to a WebSocket"}},
            "x-websocket-messages": {
                "client": [
                    {"$ref": "#/components/schemas/WsSubscribe"},
                    {"$ref": "#/components/schemas/WsUnsubscribe"},
                ],
                "gateway": [
                    {"$ref": "#/components/schemas/WsSubscribed"},
                    {"$ref": "#/components/schemas/WsUnsubscribed"},
                    {"$ref": "#/components/schemas/WsEvent"},
                    {"$ref": "#/components/schemas/WsError"},
                ],
            },
        }
    }
    return spec
