"""The composition of the gateway and its HTTP app (:func:`create_app`), and
the gateway as a plain ASGI application, for another ASGI server:
``granian --interface asgi --factory app.asgi:application``.

``coinsuper-gateway serve`` (uvicorn with the gateway's own HTTP and WebSocket
protocols) is the way to run it. Under any other server every route answers
the same, but the connection limits of app/protocols/http.py do not apply, an SSE
stream is sent through ASGI's ``send`` by a task of its own (the fallback sink
of app/http/sinks.py) and the WebSocket route refuses with a problem frame: it
needs the gateway's own protocol. bench/fanout.py ``--server granian``
measures that path.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.config import Settings, load_settings
from app.gateway import Gateway
from app.http.app import build_app
from app.logs import setup_logging


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The app on a gateway's ports (a new gateway of ``settings`` unless
    one is given); the gateway starts and stops with it."""
    the_gateway = gateway or Gateway(settings)
    return build_app(settings, the_gateway.ports, the_gateway)


def application() -> FastAPI:
    """The app, configured from the environment as ``serve`` is."""
    settings = load_settings()
    secret = [settings.coinsuper_secret_key.get_secret_value(), *settings.tokens]
    setup_logging(settings.gateway_log_level, secret, settings.gateway_log_format == "json")
    return create_app(settings)
