"""The command line: ``coinsuper-gateway serve | demo | replay | simulate | cluster | channels | openapi | asyncapi``.

Settings come from the environment (docs/operating.md); each has a flag of its own on
``serve``, ``demo`` and ``replay`` (``--gateway-port`` for ``GATEWAY_PORT``, and
short ones for the common few), and a flag wins over its variable. A wrong
setting stops the program with exit status 2 and one line naming the variable,
the problem and what is allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from app import __version__, devcluster
from app.asgi import create_app
from app.config import HELP, Settings, load_settings
from app.domain.errors import ConfigError
from app.gateway import Gateway
from app.ingest.recording import Recorder, ReplaySource
from app.logs import setup_logging
from app.protocols.server import GatewayServer
from app.protocols.websocket import GuardedWebSocketProtocol
from app.simulator import Simulator
from app.simulator.broker import BrokerPorts, DemoAccount
from app.simulator.market import Activity

ACTIVITY_HELP = (
    "the simulated market's orders arriving and cancelled, times the default (about a fifth of "
    "a book's top levels changes between two pushes; 10: most of them)"
)

log = logging.getLogger("coinsuper_gateway")

DEMO_CHANNELS = "orderbook:BTC_USD:0.01,trades:BTC_USD,depth:BTC_USD,kline:BTC_USD:1m"
SHORT_FLAGS = {
    "gateway_host": "--host",
    "gateway_port": "--port",
    "coinsuper_url": "--url",
    "coinsuper_subscribe": "--subscribe",
    "gateway_log_level": "--log-level",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the ephemeral range (32768 and up on
    Linux), so that no outgoing connection can take it before it is bound."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError("no free port between 20000 and 32000")


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (it is, with uvicorn[standard]): the
    fan-out benchmark measured it faster than asyncio's own loop (README)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _logging(settings: Settings, *hidden: str) -> None:
    secret = [settings.coinsuper_secret_key.get_secret_value(), *settings.tokens, *hidden]
    setup_logging(settings.gateway_log_level, secret, settings.gateway_log_format == "json")


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn, as the gateway runs it: its own HTTP and WebSocket protocols
    (connection limits; streams the fan-out writes to, app/http/sinks.py)."""
    trusted = settings.trusted_proxies
    options: dict[str, Any] = {
        "host": settings.gateway_host,
        "port": settings.gateway_port,
        "log_config": None,
        "access_log": settings.gateway_access_log,
        "timeout_graceful_shutdown": 5,
        "http": app.state.connections.protocol(),
        "ws": GuardedWebSocketProtocol,
        # One frame per event serves every client: no per-message compression.
        "ws_per_message_deflate": False,
        "timeout_keep_alive": settings.gateway_keepalive_timeout_s,
        # X-Forwarded-For only from the proxies named (none by default).
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or [],
        "ws_max_size": settings.gateway_ws_max_message_bytes,
        # WebSocket pings come from the fan-out's tick (GATEWAY_HEARTBEAT_S), as
        # SSE heartbeats do: no timers per connection.
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
    }
    return uvicorn.Config(app, **{**options, **overrides})


async def _serve(settings: Settings, gateway: Gateway | None = None) -> None:
    the_gateway = gateway or Gateway(settings)
    app = create_app(settings, the_gateway)
    config = server_config(app, settings)
    await GatewayServer(config, the_gateway.hub.close_all_streams).serve()


async def _simulate(args: argparse.Namespace) -> None:
    ports = BrokerPorts(host=args.host, tcp=args.tcp_port, ws=args.ws_port)
    recorder = Recorder(args.record) if args.record else None
    simulator = Simulator(
        ports,
        seed=args.seed,
        speed=args.speed,
        private_faults=args.private_faults,
        recorder=recorder,
        extra_symbols=args.extra_symbols,
        book_interval=args.book_interval,
        activity=Activity().scaled(args.activity),
        books_together=args.books_together,
    )
    await simulator.start()
    account = simulator.account
    print(
        f"simulated exchange: mqtt://{ports.host}:{ports.tcp} and ws://{ports.host}:{ports.ws}/mqtt"
        f" (access key {account.access_key!r}, secret key {account.secret_key!r},"
        f" e-mail {account.email!r})",
        flush=True,
    )
    # SIGTERM and SIGINT end it cleanly, so that a recording is complete.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await simulator.stop()
        if recorder is not None:
            recorder.close()


async def _demo(overrides: dict[str, Any], seed: int | None, activity: float = 1.0) -> None:
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
    _logging(settings, account.secret_key)
    simulator = Simulator(ports, account=account, seed=seed, activity=Activity().scaled(activity))
    await simulator.start()
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: asyncio.ensure_future(_toggle_exchange(simulator))
    )
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    lines = [
        f"coinsuper-gateway demo: the gateway follows a simulated exchange at {settings.coinsuper_url}",
        f"  open            {base}/",
        f"  order book      curl '{base}/v1/orderbook/BTC_USD?step=0.01'",
        f"  live stream     curl -N '{base}/v1/stream?channels=trades:BTC_USD,orderbook:BTC_USD:0.01'",
    ]
    if settings.tokens:
        token = settings.tokens[0]
        lines += [
            f"  private data    curl -H 'Authorization: Bearer {token}' {base}/v1/account/assets",
            f"  demo token      {token}",
        ]
    lines += [
        f"  exchange down   kill -USR1 {os.getpid()}   (again to bring it back)",
        "  stop            Ctrl-C",
    ]
    print("\n" + "\n".join(lines) + "\n", flush=True)
    try:
        await _serve(settings)
    finally:
        await simulator.stop()


async def _toggle_exchange(simulator: Simulator) -> None:
    """SIGUSR1 in the demo: stop the simulated broker, or start it again."""
    if simulator.broker_running:
        log.warning("demo: simulated exchange stopped (SIGUSR1 again to restart it)")
        await simulator.stop_broker()
    else:
        await simulator.start_broker()
        log.warning("demo: simulated exchange started again")


async def _replay(settings: Settings, files: list[str], speed: float) -> None:
    source = ReplaySource(files, speed)
    await _serve(settings, Gateway(settings, replay=source))


def _channels(url: str, token: str | None) -> int:
    """Print a running gateway's channels as a table."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        body = httpx.get(url.rstrip("/") + "/v1/channels", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"coinsuper-gateway: cannot read {url}/v1/channels: {exc}", file=sys.stderr)
        return 1
    if "channels" not in body:
        print(f"coinsuper-gateway: {body.get('detail', body)}", file=sys.stderr)
        return 1
    columns = [
        "channel",
        "status",
        "seq",
        "messages",
        "rejected",
        "subscribers",
        "link_state",
        "reason",
    ]
    rows = [
        [str(item.get(c) if item.get(c) is not None else "") for c in columns]
        for item in body["channels"]
    ]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} channels, {body['open_streams']} open streams")
    return 0


def openapi_text() -> str:
    """The OpenAPI document of the app with default settings, as committed."""
    app = create_app(Settings.model_construct())  # defaults only: never the environment
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named after its variable."""
    group = parser.add_argument_group(
        "settings", "each also read from its environment variable; a flag wins"
    )
    for name, field in Settings.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"]
        if name in SHORT_FLAGS:
            flags.insert(0, SHORT_FLAGS[name])
        default = field.default
        shown = "" if isinstance(default, str) and not default else f", default {default}"
        if "secret" in name or "password" in name or name == "gateway_tokens":
            shown = ""
        group.add_argument(
            *flags, dest=name, metavar="VALUE", help=f"{HELP[name]} ({name.upper()}{shown})"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinsuper-gateway",
        description="Coinsuper's MQTT push feed as REST snapshots and Server-Sent Events.",
        epilog="Settings (environment variables, or flags of serve, demo and replay):\n"
        + "\n".join(f"  {name.upper():34} {HELP[name]}" for name in Settings.model_fields),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway against COINSUPER_URL")
    serve.add_argument(
        "--record", metavar="FILE", help="append every upstream message to FILE (gzip JSON lines)"
    )
    serve.add_argument(
        "--record-max-mb",
        type=float,
        default=64,
        help="rotate the recording at this size (default 64)",
    )
    demo = commands.add_parser(
        "demo", help="run the gateway against the built-in simulated exchange"
    )
    demo.add_argument("--seed", type=int, help="seed of the simulated market")
    demo.add_argument("--activity", type=float, default=1.0, help=ACTIVITY_HELP)
    replay = commands.add_parser(
        "replay", help="serve a gateway fed from recordings instead of a broker"
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="recordings, oldest first")
    replay.add_argument(
        "--speed", type=float, default=1.0, help="replay speed (default 1: as recorded)"
    )
    for sub in (serve, demo, replay):
        _add_settings(sub)

    channels = commands.add_parser(
        "channels", help="print the channels of a running gateway as a table"
    )
    channels.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the gateway (default %(default)s)"
    )
    channels.add_argument("--token", help="bearer token, if the gateway requires one")

    group = commands.add_parser(
        "cluster",
        help="run a cluster on this machine: redis-server, the simulated exchange, three replicas",
    )
    group.add_argument("--replicas", type=int, default=3, choices=range(1, 10), metavar="N")
    group.add_argument("--base-port", type=int, default=8001, help="the first replica's port")
    group.add_argument(
        "--leader-ttl-ms", type=int, default=3000, help="GATEWAY_LEADER_TTL_MS of the replicas"
    )
    group.add_argument(
        "--sentinel",
        action="store_true",
        help="a Redis master and replica behind three redis-sentinel processes, not one Redis",
    )

    spec = commands.add_parser("openapi", help="write the OpenAPI description of the HTTP API")
    spec.add_argument("--output", default="-", help="file to write (default: standard output)")
    streams = commands.add_parser(
        "asyncapi", help="write the AsyncAPI description of the streams (SSE and the WebSocket)"
    )
    streams.add_argument("--output", default="-", help="file to write (default: standard output)")

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
    simulate.add_argument(
        "--record", metavar="FILE", help="write what it publishes to FILE, for replay"
    )
    simulate.add_argument(
        "--extra-symbols", type=int, default=0, help="more symbols, SIM00_USD, SIM01_USD, …"
    )
    simulate.add_argument(
        "--book-interval", type=float, help="push order books every this many seconds exactly"
    )
    simulate.add_argument("--activity", type=float, default=1.0, help=ACTIVITY_HELP)
    simulate.add_argument(
        "--books-together",
        action="store_true",
        help="push every order book at the same moments (a burst), not each at a phase of its own",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("openapi", "asyncapi"):
            if args.command == "openapi":
                text = openapi_text()
            else:
                from app.http import asyncapi  # PyYAML only for this command

                text = asyncapi.text()
            if args.output == "-":
                sys.stdout.write(text)
            else:
                Path(args.output).write_text(text, encoding="utf-8")
            return 0
        if args.command == "channels":
            return _channels(args.url, args.token)
        if args.command == "cluster":
            setup_logging("info")
            devcluster.run(args.replicas, args.base_port, args.leader_ttl_ms, args.sentinel)
            return 0
        if args.command == "simulate":
            setup_logging("info")
            with contextlib.suppress(KeyboardInterrupt):
                _run(_simulate(args))
            return 0
        overrides = _overrides(args)
        settings = load_settings(**overrides)
        with contextlib.suppress(KeyboardInterrupt):
            if args.command == "serve":
                _logging(settings)
                recorder = (
                    Recorder(args.record, max_bytes=int(args.record_max_mb * 1024 * 1024))
                    if args.record
                    else None
                )
                gateway = Gateway(settings, recorder=recorder) if recorder else None
                _run(_serve(settings, gateway))
            elif args.command == "replay":
                _logging(settings)
                _run(_replay(settings, args.files, args.speed))
            else:
                _run(_demo(overrides, args.seed, args.activity))
    except ConfigError as exc:
        print(f"coinsuper-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
