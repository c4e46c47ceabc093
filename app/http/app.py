"""The ASGI application: routes, problems, and the gateway's life cycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.config import Settings
from app.gateway import Gateway
from app.http import problems, rest, stream
from app.http.auth import TokenCheck


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """Build the app; the gateway starts and stops with it."""
    the_gateway = gateway or Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_gateway.start()
        try:
            yield
        finally:
            await the_gateway.stop()

    app = FastAPI(
        title="coinsuper-gateway",
        version=__version__,
        summary="Coinsuper's MQTT push feed as REST snapshots and Server-Sent Events",
        lifespan=lifespan,
    )
    app.state.gateway = the_gateway
    app.state.tokens = TokenCheck(settings.tokens)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID", "If-None-Match"],
            expose_headers=["ETag", "Retry-After"],
        )
    problems.install(app)
    app.include_router(rest.router)
    app.include_router(stream.router)
    return app
