"""The snapshot routes answered in the connection layer, without the ASGI
round trip, when the answer is stored bytes (:class:`FastRoutes`).

A REST snapshot is cached bytes, yet the framework path around it (a task per
request, the middleware stack, routing, FastAPI's dependencies and parameter
model, a ``Response``) cost it 25 of every 26 microseconds (bench/rest.py).
:class:`app.protocols.http.GuardedProtocol` asks :class:`FastRoutes` first (for a
plain request that arrived whole, before its parser sees it; else once the
head is complete); the answer it gets is written as uvicorn would
write the framework's (the same status line, headers in the same order, the
same access-log line, the same metric), or it gets None and the request goes
through FastAPI as before.

Only the plain case is answered here: a ``GET`` of a snapshot route with
parameters that are valid as they stand (no percent-encoding, no repeated
name), the data there already, and nothing for CORS or a proxy's forwarded
headers to do. Anything else (a bad parameter, a missing or wrong token, no
data yet and so a ``wait``, a cap) declines, and the framework answers it: its
problems, messages and headers are then the only ones there are.
What a request asks for and may have (route, channel, rendering, the ETags
it holds, its token checked, or a decline) depends on its bytes alone, so it is
kept for requests of the same bytes (a poller sends the same bytes again and
again), as are a target's resolution and an answer's header lines (each
bounded). Only what can change is read per request: whether the private link
is up, the channel's state, its rendering (the store's cached bytes). The
tokens are read once, at start, so a token checked stays checked. ``tests/test_fast_routes.py``
checks, route by route, good and bad input, that both paths answer the same
bytes and count the same metric. ``GATEWAY_FAST_ROUTES=false`` turns it off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Histogram

from app.domain.channels import Channel
from app.domain.errors import GatewayError
from app.http import rest
from app.http.auth import TokenCheck, bearer
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


Params = dict[str, str]
# A route's target of its path's symbol and its query (rest.py's, as the route reads them).
Route = Callable[[str, Params], rest.Target]
# A request target resolved: the route's template (the metric's label), the channel, the rendering.
Resolved = tuple[str, Channel, rest.Render]
# Targets kept resolved: at most this many (then forgotten at once), each at most this long.
_RESOLVED_MAX = 4096
_RESOLVED_KEY_MAX = 256
# A request prepared: its route's template (the metric's label), channel and
# rendering, and the ETags its If-None-Match holds.
Prepared = tuple[str, Channel, rest.Render, frozenset[str]]


class _Declined:
    """A request prepared to be declined (the framework answers it)."""


_DECLINED = _Declined()
# Requests kept prepared, by their bytes, and header lines kept made, by ETag
# and length: at most this many of each (then forgotten at once).
_KEPT_MAX = 1024


class FastRoutes:
    """The hot snapshot routes, for the connection layer: ``answer(path,
    query, headers, key)`` is the response's status, header lines and body,
    or None (``key``: the request's bytes, when what it asks may be kept)."""

    def __init__(
        self, ports: Ports, tokens: TokenCheck, histogram: Histogram, *, cors: bool
    ) -> None:
        self.ports = ports
        self.tokens = tokens
        self.cors = cors
        self.node = ports.report.node
        self.histogram = histogram
        self._timers: dict[tuple[str, int], Callable[[float], None]] = {}
        # Request target → what it resolves to (None: the framework's), for repeated targets.
        self._resolved: dict[bytes, Resolved | None] = {}
        # A request's bytes → what it was prepared to (see :meth:`_prepare`).
        self._prepared: dict[bytes, Prepared | _Declined] = {}
        # (ETag, body length, or None for a 304) → the answer's header lines.
        self._header_lines: dict[tuple[str, int | None], bytes] = {}
        # Path prefix (a symbol follows) or whole path → (route template, target).
        self.routes: dict[bytes, tuple[str, Route]] = {
            b"/v1/orderbook/": (
                "/v1/orderbook/{symbol:path}",
                lambda symbol, q: rest.orderbook_target(symbol, q.get("step")),
            ),
            b"/v1/depth/": ("/v1/depth/{symbol:path}", lambda symbol, q: rest.depth_target(symbol)),
            b"/v1/kline/": (
                "/v1/kline/{symbol:path}",
                lambda symbol, q: rest.kline_target(symbol, q.get("range")),
            ),
            b"/v1/klines/": (
                "/v1/klines/{symbol:path}",
                lambda symbol, q: rest.klines_target(symbol, q.get("range"), q.get("limit")),
            ),
            b"/v1/trades/": (
                "/v1/trades/{symbol:path}",
                lambda symbol, q: rest.trades_target(symbol, q.get("limit")),
            ),
        }
        self.exact: dict[bytes, tuple[str, Route]] = {
            b"/v1/account/assets": ("/v1/account/assets", lambda _, q: rest.assets_target()),
            b"/v1/account/orders": (
                "/v1/account/orders",
                lambda _, q: rest.orders_target(q.get("state"), q.get("symbol")),
            ),
            b"/v1/account/fills": (
                "/v1/account/fills",
                lambda _, q: rest.fills_target(q.get("limit")),
            ),
        }

    def answer(
        self, path: bytes, query: bytes, headers: Headers, key: bytes | None = None
    ) -> FastAnswer | None:
        started = time.perf_counter()
        prepared = self._prepared.get(key) if key is not None else None
        if prepared is None:
            prepared = self._prepare(path, query, headers)
            if key is not None:
                _keep(self._prepared, key, prepared, _KEPT_MAX)
        if isinstance(prepared, _Declined):
            return None
        template, channel, render, tags = prepared
        try:
            reading = self._read(channel)
        except (_Decline, GatewayError):
            return None
        etag = reading.etag
        if etag in tags:
            status, body, length = 304, b"", None
        else:
            body = render(reading)
            status, length = 200, len(body)
        head = self._header_lines.get((etag, length))
        if head is None:
            head = _keep(self._header_lines, (etag, length), _head_lines(etag, length), _KEPT_MAX)
        self._timer(template, status)(time.perf_counter() - started)
        return status, head, body

    def _prepare(self, path: bytes, query: bytes, headers: Headers) -> Prepared | _Declined:
        """What a request asks for and may have (its route, channel,
        rendering and the ETags it holds), worked out once: it depends on
        nothing but the request (and this process's settings and tokens), so
        answers keep it for requests of the same bytes (:data:`_KEPT_MAX`)."""
        key = path + b"?" + query
        try:
            resolved = self._resolved[key]
        except KeyError:
            resolved = self._resolve(path, query)
            if len(key) <= _RESOLVED_KEY_MAX:
                _keep(self._resolved, key, resolved, _RESOLVED_MAX)
        if resolved is None:
            return _DECLINED
        template, channel, render = resolved
        try:
            request = _head(headers, self.cors)
            if channel.is_private or self.ports.settings.gateway_require_token:
                self._token(request)
        except _Decline:
            return _DECLINED
        return template, channel, render, frozenset(rest.etags(request.get(b"if-none-match")))

    def _resolve(self, path: bytes, query: bytes) -> Resolved | None:
        """What a request target asks for (its route, channel and rendering),
        or None when the framework must answer it. Pure: a target resolves
        the same way every time, so answers keep it (:data:`_RESOLVED_MAX`)."""
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
            channel, render = route(symbol, params)
            rest.wait_ms(self.ports, params.get("wait"))
        except (_Decline, GatewayError):
            return None
        return template, channel, render

    def _read(self, channel: Channel) -> Reading:
        """What the route's ``answer`` reads, or a decline wherever it would
        do anything else (a problem, a wait)."""
        ports = self.ports
        if channel.is_private:
            if not ports.report.private_enabled():
                raise _Decline
        else:
            ports.demand.demand(channel)
        reading = ports.view.read(channel)
        if reading is None:
            raise _Decline  # the route waits for it, or answers 503
        return reading

    def _token(self, request: dict[bytes, str]) -> None:
        header = request.get(b"authorization")
        token = bearer(header) if header else None
        if token is None or not self.tokens.accepts(token):
            raise _Decline

    def _timer(self, template: str, status: int) -> Callable[[float], None]:
        timer = self._timers.get((template, status))
        if timer is None:
            labelled = self.histogram.labels(template, "GET", str(status), self.node)
            timer = self._timers[(template, status)] = labelled.observe
        return timer


def _head_lines(etag: str, length: int | None) -> bytes:
    """A snapshot's header lines as the routes send them: for a body of
    ``length`` bytes (a ``200``), or None (a ``304``)."""
    lines = b"etag: %s\r\ncache-control: no-cache\r\n" % etag.encode("latin-1")
    if length is not None:
        lines += b"content-length: %d\r\ncontent-type: %s\r\n" % (length, JSON)
    return lines


_K = TypeVar("_K")
_V = TypeVar("_V")


def _keep(cache: dict[_K, _V], key: _K, value: _V, most: int) -> _V:
    """``value`` kept in ``cache`` under ``key``; a cache of ``most`` entries
    is forgotten all at once first."""
    if len(cache) >= most:
        cache.clear()
    cache[key] = value
    return value


def _params(query: bytes) -> Params:
    """The query's parameters; a decline when a name comes twice (which of
    them counts is the framework's to say)."""
    params: Params = {}
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
