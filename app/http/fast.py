"""The snapshot routes answered in the connection layer, without the ASGI
round trip, when the answer is stored bytes (:class:`FastRoutes`).

A REST snapshot is cached bytes, yet the framework path around it (a task per
request, the middleware stack, routing, FastAPI's dependencies and parameter
model, a ``Response``) cost it 25 of every 26 microseconds (bench/rest.py).
:class:`app.protocols.http.GuardedProtocol` asks :class:`FastRoutes` first, once
a request's head is complete; the answer it gets is written as uvicorn would
write the framework's (the same status line, headers in the same order, the
same access-log line, the same metric), or it gets None and the request goes
through FastAPI as before.

Only the plain case is answered here: a ``GET`` of a snapshot route with
parameters that are valid as they stand (no percent-encoding, no repeated
name), the data there already, and nothing for CORS or a proxy's forwarded
headers to do. Anything else (a bad parameter, a missing or wrong token, no
data yet and so a ``wait``, a cap) declines, and the framework answers it: its
problems, messages and headers are then the only ones there are.
``tests/test_fast_routes.py`` checks, route by route, that both paths answer
the same bytes. ``GATEWAY_FAST_ROUTES=false`` turns it off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import Histogram

from app.domain.channels import Channel, Kind, normalize_symbol
from app.domain.errors import GatewayError
from app.http import rest
from app.http.auth import TokenCheck
from app.ports import Ports, Reading
from app.protocols.http import FastAnswer

Headers = list[tuple[bytes, bytes]]
# What a query may hold to be answered here: nothing to decode.
_PLAIN_QUERY = re.compile(
    rb"[A-Za-z0-9_.\-]+=[A-Za-z0-9_.\-]*(?:&[A-Za-z0-9_.\-]+=[A-Za-z0-9_.\-]*)*"
)
_PLAIN_PATH = re.compile(rb"[A-Za-z0-9_./\-]+")
JSON = b"application/json"


class _Decline(Exception):
    """The framework answers this request."""


class FastRoutes:
    """The hot snapshot routes, for the connection layer: ``answer(url,
    headers)`` is the response's status, headers and body and its route's
    template (for the access log and the metric), or None."""

    def __init__(
        self, ports: Ports, tokens: TokenCheck, histogram: Histogram, *, cors: bool
    ) -> None:
        self.ports = ports
        self.tokens = tokens
        self.cors = cors
        self.node = ports.report.node
        self.histogram = histogram
        self._timers: dict[tuple[str, int], Callable[[float], None]] = {}
        # Path prefix → (route template, the channel and render of a request).
        self.routes: dict[bytes, tuple[str, Route]] = {
            b"/v1/orderbook/": ("/v1/orderbook/{symbol:path}", _orderbook),
            b"/v1/depth/": ("/v1/depth/{symbol:path}", _depth),
            b"/v1/kline/": ("/v1/kline/{symbol:path}", _kline),
            b"/v1/klines/": ("/v1/klines/{symbol:path}", _klines),
            b"/v1/trades/": ("/v1/trades/{symbol:path}", _trades),
        }
        self.exact: dict[bytes, tuple[str, Route]] = {
            b"/v1/account/assets": ("/v1/account/assets", _assets),
            b"/v1/account/orders": ("/v1/account/orders", _orders),
            b"/v1/account/fills": ("/v1/account/fills", _fills),
        }

    def answer(self, path: bytes, query: bytes, headers: Headers) -> FastAnswer | None:
        started = time.perf_counter()
        found = self.exact.get(path)
        symbol = ""
        if found is None:
            cut = path.find(b"/", 4) + 1  # after "/v1/<kind>/"
            found = self.routes.get(path[:cut]) if path.startswith(b"/v1/") and cut else None
            if found is None or len(path) == cut or not _PLAIN_PATH.fullmatch(path):
                return None
            symbol = path[cut:].decode("ascii")
        if query and not _PLAIN_QUERY.fullmatch(query):
            return None
        template, route = found
        try:
            params = _params(query)
            request = _head(headers, self.cors)
            channel, render = route(symbol, params)
            reading = self._read(channel, params, request)
        except (_Decline, GatewayError):
            return None
        etag = reading.etag
        head = [(b"etag", etag.encode("latin-1")), (b"cache-control", b"no-cache")]
        if etag in rest.etags(request.get(b"if-none-match")):
            status, body = 304, b""
        else:
            body = render(reading)
            status = 200
            head += [(b"content-length", b"%d" % len(body)), (b"content-type", JSON)]
        self._timer(template, status)(time.perf_counter() - started)
        return status, head, body, template

    def _read(self, channel: Channel, params: dict[str, str], request: dict[bytes, str]) -> Reading:
        """What the route's ``answer`` reads, or a decline wherever it would
        do anything else (a problem, a wait)."""
        ports = self.ports
        settings = ports.settings
        rest.parse_int(
            "wait",
            params.get("wait"),
            default=settings.gateway_wait_default_ms,
            low=0,
            high=settings.gateway_wait_max_ms,
        )
        if channel.is_private:
            if not ports.report.private_enabled():
                raise _Decline
            self._token(request)
        else:
            if settings.gateway_require_token:
                self._token(request)
            ports.demand.demand(channel)
        reading = ports.view.read(channel)
        if reading is None:
            raise _Decline  # the route waits for it, or answers 503
        return reading

    def _token(self, request: dict[bytes, str]) -> None:
        header = request.get(b"authorization")
        if not header:
            raise _Decline
        scheme, _, value = header.partition(" ")
        if (
            scheme.lower() != "bearer"
            or not value.strip()
            or not self.tokens.accepts(value.strip())
        ):
            raise _Decline

    def _timer(self, template: str, status: int) -> Callable[[float], None]:
        timer = self._timers.get((template, status))
        if timer is None:
            labelled = self.histogram.labels(template, "GET", str(status), self.node)
            timer = self._timers[(template, status)] = labelled.observe
        return timer


Render = Callable[[Reading], bytes]
Route = Callable[[str, dict[str, str]], tuple[Channel, Render]]


def _params(query: bytes) -> dict[str, str]:
    """The query's parameters; a decline when a name comes twice (which of
    them counts is the framework's to say)."""
    params: dict[str, str] = {}
    if query:
        for pair in query.decode("ascii").split("&"):
            name, _, value = pair.partition("=")
            if name in params:
                raise _Decline
            params[name] = value
    return params


def _head(headers: Headers, cors: bool) -> dict[bytes, str]:
    """The request headers the routes read (the first of each, as Starlette
    reads them); a decline when CORS or a proxy's headers have a say."""
    wanted: dict[bytes, str] = {}
    for name, value in headers:
        if name in (b"authorization", b"if-none-match"):
            wanted.setdefault(name, value.decode("latin-1"))
        elif (
            name.startswith(b"x-forwarded-") or name == b"forwarded" or (cors and name == b"origin")
        ):
            raise _Decline
    return wanted


def _snapshot(reading: Reading) -> bytes:
    return reading.snapshot()


def _orderbook(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    step = rest.required("step", params.get("step"), "a step such as 0.01")
    return Channel.orderbook(symbol, step), _snapshot


def _depth(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    return Channel.depth(symbol), _snapshot


def _kline(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    range_ = rest.required("range", params.get("range"), "a range such as 1m")
    return Channel.kline(symbol, range_), _snapshot


def _klines(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    range_ = rest.required("range", params.get("range"), "a range such as 1m")
    channel = Channel.kline(symbol, range_)
    count = rest.parse_int("limit", params.get("limit"), default=100, low=1, high=rest.MAX_LIMIT)
    return channel, lambda reading: reading.candles(count)


def _trades(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    count = rest.parse_int("limit", params.get("limit"), default=50, low=1, high=rest.MAX_LIMIT)
    return Channel.trades(symbol), lambda reading: reading.trades(count)


def _assets(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    return Channel(Kind.ASSETS), _snapshot


def _orders(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    state, wanted = params.get("state"), params.get("symbol")
    if state is not None and state.lower() not in rest.ORDER_STATES:
        raise _Decline
    wanted_state = state.lower() if state else None
    wanted_symbol = normalize_symbol(wanted).replace("_", "/") if wanted else None
    return Channel(Kind.ORDERS), lambda reading: reading.orders(wanted_state, wanted_symbol)


def _fills(symbol: str, params: dict[str, str]) -> tuple[Channel, Render]:
    count = rest.parse_int("limit", params.get("limit"), default=100, low=1, high=rest.MAX_LIMIT)
    return Channel(Kind.FILLS), lambda reading: reading.fills(count)
