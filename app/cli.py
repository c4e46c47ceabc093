"""The command line: ``coinsuper-gateway serve | simulate | demo``.

Settings come from the environment (API.md); a flag given here wins over its
variable. A wrong setting stops the program with exit status 2 and one line
naming the variable, the problem and what is allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from app import __version__
from app.config import Settings, load_settings
from app.errors import ConfigError
from app.http.app import create_app
from app.logs import setup_logging
from app.simulator import Simulator
from app.simulator.broker import BrokerPorts, DemoAccount

log = logging.getLogger("coinsuper_gateway")

DEMO_CHANNELS = "orderbook:BTC_USD:0.01,trades:BTC_USD,depth:BTC_USD,kline:BTC_USD:1m"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayServer(uvicorn.Server):
    """uvicorn's server; a SIGTERM or SIGINT that led to a graceful shutdown
    ends the program with status 0 rather than being raised again."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


async def _serve(settings: Settings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=True,
        timeout_graceful_shutdown=5,
    )
    await GatewayServer(config).serve()


async def _simulate(ports: BrokerPorts, seed: int | None, speed: float, faults: float) -> None:
    simulator = Simulator(ports, seed=seed, speed=speed, private_faults=faults)
    await simulator.start()
    print(
        f"simulated exchange: mqtt://{ports.host}:{ports.tcp} and ws://{ports.host}:{ports.ws}/mqtt"
        f" (access key {simulator.account.access_key!r}, secret key"
        f" {simulator.account.secret_key!r}, e-mail {simulator.account.email!r})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()


async def _demo(overrides: dict[str, Any], seed: int | None) -> None:
    account = DemoAccount()
    ports = BrokerPorts(tcp=free_port(), ws=free_port())
    defaults: dict[str, Any] = {
        "coinsuper_url": f"ws://{ports.host}:{ports.ws}/mqtt",
        "coinsuper_access_key": account.access_key,
        "coinsuper_secret_key": account.secret_key,
        "coinsuper_email": account.email,
        "coinsuper_subscribe": DEMO_CHANNELS,
    }
    if not os.environ.get("GATEWAY_TOKENS") and not os.environ.get("GATEWAY_TOKENS_FILE"):
        defaults["gateway_tokens"] = "demo-" + secrets.token_urlsafe(12)
    settings = load_settings(**{**defaults, **overrides})
    setup_logging(
        settings.gateway_log_level,
        [account.secret_key, *settings.tokens],
        settings.gateway_log_format == "json",
    )
    simulator = Simulator(ports, account=account, seed=seed)
    await simulator.start()
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    lines = [
        f"coinsuper-gateway demo: the gateway follows a simulated exchange at {settings.coinsuper_url}",
        f"  open            {base}/v1/channels",
        f"  order book      curl '{base}/v1/orderbook/BTC_USD?step=0.01'",
        f"  live stream     curl -N '{base}/v1/stream?channels=trades:BTC_USD,orderbook:BTC_USD:0.01'",
    ]
    if settings.tokens:
        token = settings.tokens[0]
        lines += [
            f"  private data    curl -H 'Authorization: Bearer {token}' {base}/v1/account/assets",
            f"  demo token      {token}",
        ]
    lines.append("  stop            Ctrl-C")
    print("\n" + "\n".join(lines) + "\n", flush=True)
    try:
        await _serve(settings)
    finally:
        await simulator.stop()


def openapi_text() -> str:
    """The OpenAPI document of the app with default settings, as committed."""
    app = create_app(Settings.model_construct())  # defaults only: never the environment
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_openapi(output: str) -> None:
    text = openapi_text()
    if output == "-":
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinsuper-gateway",
        description="Coinsuper's MQTT push feed as REST snapshots and Server-Sent Events. "
        "Settings are read from environment variables (see README); flags win over them.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway against COINSUPER_URL")
    demo = commands.add_parser(
        "demo", help="run the gateway against the built-in simulated exchange"
    )
    for sub in (serve, demo):
        sub.add_argument("--host", help="listen address (GATEWAY_HOST)")
        sub.add_argument("--port", type=int, help="listen port (GATEWAY_PORT)")
        sub.add_argument("--subscribe", help="channels to follow from start (COINSUPER_SUBSCRIBE)")
        sub.add_argument("--log-level", help="debug, info, warning or error (GATEWAY_LOG_LEVEL)")
    serve.add_argument("--url", help="upstream broker URL (COINSUPER_URL)")
    demo.add_argument("--seed", type=int, help="seed of the simulated market")

    spec = commands.add_parser("openapi", help="write the OpenAPI description of the HTTP API")
    spec.add_argument("--output", default="-", help="file to write (default: standard output)")

    simulate = commands.add_parser("simulate", help="run only the simulated exchange")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--tcp-port", type=int, default=18830)
    simulate.add_argument("--ws-port", type=int, default=18831)
    simulate.add_argument("--seed", type=int)
    simulate.add_argument("--speed", type=float, default=1.0, help="publish rate multiplier")
    simulate.add_argument(
        "--private-faults",
        type=float,
        default=0.0,
        help="rate (0-0.3) at which private pushes are each dropped, duplicated and reordered",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "host": "gateway_host",
        "port": "gateway_port",
        "subscribe": "coinsuper_subscribe",
        "log_level": "gateway_log_level",
        "url": "coinsuper_url",
    }
    return {
        setting: getattr(args, flag)
        for flag, setting in names.items()
        if getattr(args, flag, None) is not None
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            setup_logging("info")
            ports = BrokerPorts(host=args.host, tcp=args.tcp_port, ws=args.ws_port)
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_simulate(ports, args.seed, args.speed, args.private_faults))
            return 0
        if args.command == "openapi":
            write_openapi(args.output)
            return 0
        overrides = _overrides(args)
        settings = load_settings(**overrides)
        with contextlib.suppress(KeyboardInterrupt):
            if args.command == "serve":
                hidden = [settings.coinsuper_secret_key.get_secret_value(), *settings.tokens]
                setup_logging(
                    settings.gateway_log_level, hidden, settings.gateway_log_format == "json"
                )
                asyncio.run(_serve(settings))
            else:
                asyncio.run(_demo(overrides, args.seed))
    except ConfigError as exc:
        print(f"coinsuper-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
