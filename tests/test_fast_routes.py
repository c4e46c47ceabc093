"""The connection layer's fast path (app/http/fast.py) answers exactly what
FastAPI answers: for every REST snapshot route, good and bad input alike, the
same status, headers and bytes, and the same request metric.

One gateway, in this event loop, follows the simulated exchange until every
route has data; then the exchange stops, so that nothing changes, and each
request is sent twice over a raw socket: with the fast path, and with it
taken out of the connection layer (FastAPI answers everything then). The
``date`` header is the only one allowed to differ (the second may turn)."""

from __future__ import annotations

import asyncio
import inspect
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from app.asgi import create_app
from app.cli import free_port, server_config
from app.config import load_settings
from app.http.fast import _KEPT_MAX, FastRoutes
from app.protocols.http import WHOLE_KEPT_HEADERS, WHOLES_MAX, FastAnswer
from app.simulator import Simulator
from app.simulator.broker import BrokerPorts, DemoAccount

pytestmark = pytest.mark.timeout(120)

ACCOUNT = DemoAccount()
KEEPALIVE_S = 2  # the served gateway's keep-alive timeout
TOKEN = "tok-" + "f" * 24
AUTH = f"Authorization: Bearer {TOKEN}"
SUBSCRIBED = (
    "orderbook:BTC_USD:0.01,orderbook:ETH_BTC:0.00000001,depth:BTC_USD,kline:BTC_USD:1m,"
    "trades:BTC_USD,assets,orders,fills"
)
ROUTES = [
    "/v1/orderbook/BTC_USD?step=0.01",
    "/v1/orderbook/ETH_BTC?step=0.00000001",
    "/v1/depth/BTC_USD",
    "/v1/kline/BTC_USD?range=1m",
    "/v1/klines/BTC_USD?range=1m",
    "/v1/trades/BTC_USD",
    "/v1/account/assets",
    "/v1/account/orders",
    "/v1/account/fills",
]


class Recording:
    """The fast routes, noting which requests they answered, and on which of
    the connection layer's two paths: a request that came whole, before the
    parser (``_answer_whole``), or once the parser had its head (``_answer_fast``)."""

    def __init__(self, fast: FastRoutes) -> None:
        self.fast = fast
        self.answered: list[tuple[bytes, str]] = []

    def answer(self, path: bytes, query: bytes, headers: list[tuple[bytes, bytes]],
               key: bytes | None = None) -> FastAnswer | None:
        answer = self.fast.answer(path, query, headers, key)
        if answer is not None:
            caller = inspect.currentframe().f_back.f_code.co_name  # type: ignore[union-attr]
            self.answered.append((path + b"?" + query, caller))
        return answer


def request(target: str, headers: tuple[str, ...] = (), *, keep_alive: bool = False) -> bytes:
    head = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


def response_of(sock: socket.socket, *, keep_alive: bool) -> bytes:
    """One response, whole: up to the close, or (kept alive) its content-length."""
    response = b""
    while True:
        data = sock.recv(65536)
        response += data
        if not data:
            break
        if keep_alive and b"\r\n\r\n" in response:
            head_bytes, _, body = response.partition(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: (\d+)", head_bytes, re.IGNORECASE)
            if len(body) >= (int(length.group(1)) if length else 0):
                break
    return re.sub(rb"\r\ndate: [^\r]*\r\n", b"\r\ndate: -\r\n", response)


def raw(port: int, target: str, headers: tuple[str, ...] = (), *, keep_alive: bool = False,
        split: bool = False) -> bytes:
    """One request's whole response, as bytes, over a connection of its own.
    The request goes whole in one write (answered before the parser, when the
    fast path can), or, ``split``, in two (the parser's path)."""
    data = request(target, headers, keep_alive=keep_alive)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if split:
            sock.sendall(data[:10])
            time.sleep(0.05)
            sock.sendall(data[10:])
        else:
            sock.sendall(data)
        return response_of(sock, keep_alive=keep_alive)


@dataclass
class Served:
    port: int
    connections: Any  # the connection guard: its ``fast`` is what the layer asks
    fast: Recording

    def metrics(self) -> dict[str, float]:
        """The request histogram's counts (the /metrics requests themselves left out)."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        counts = re.findall(r"^(coinsuper_http_request_duration_seconds_count\{.*\}) (\S+)$", text, re.M)
        return {name: float(value) for name, value in counts if 'route="/metrics"' not in name}

    def both(self, target: str, *headers: str, keep_alive: bool = False, split: bool = False) -> bytes:
        """The fast path's answer, once it is checked to be FastAPI's, each
        with the same request metric counted (:attr:`path`: which path of the
        connection layer answered it, None if it went to FastAPI)."""
        raw(self.port, target, headers)  # what a first request sets going (demand) is set going
        before = self.metrics()
        responses = []
        self.path: str | None = None
        for fast in (self.fast, None):
            self.connections.fast = fast
            answered = len(self.fast.answered)
            responses.append(raw(self.port, target, headers, keep_alive=keep_alive, split=split))
            if fast is not None and len(self.fast.answered) > answered:
                self.path = self.fast.answered[-1][1]
        self.connections.fast = self.fast
        after = self.metrics()
        fast_response, framework_response = responses
        assert fast_response == framework_response, target
        # Both requests counted under the same labels: each series that moved moved by two.
        counted = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k)}
        assert counted and set(counted.values()) == {2}, (target, counted)
        return fast_response


async def _serve(ready: queue.Queue[Served | BaseException], stop: threading.Event) -> None:
    try:
        sim = Simulator(BrokerPorts(tcp=free_port(), ws=free_port()), account=ACCOUNT, seed=4, speed=8)
        await sim.start()
    except BaseException as exc:
        ready.put(exc)
        raise
    try:
        settings = load_settings(
            coinsuper_url=f"mqtt://127.0.0.1:{sim.ports.tcp}",
            coinsuper_access_key=ACCOUNT.access_key,
            coinsuper_secret_key=ACCOUNT.secret_key,
            coinsuper_email=ACCOUNT.email,
            coinsuper_subscribe=SUBSCRIBED,
            gateway_tokens=TOKEN,
            gateway_stale_factor=1000,
            gateway_keepalive_timeout_s=KEEPALIVE_S,
        )
        app = create_app(settings)
        port = free_port()
        server = uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=port))
        task = asyncio.create_task(server.serve())
    except BaseException as exc:
        ready.put(exc)
        await sim.stop()
        raise
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
            await asyncio.sleep(0.05)
        connections = app.state.connections
        assert isinstance(connections.fast, FastRoutes)
        recording = Recording(connections.fast)
        connections.fast = recording
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            deadline = asyncio.get_running_loop().time() + 40
            for route in ROUTES:  # every route with data (the account's fills and orders too)
                while not await _has_data(http, route):
                    assert asyncio.get_running_loop().time() < deadline, f"no data for {route}"
                    await asyncio.sleep(0.2)
        # Nothing changes from here: the exchange is gone (its links retry in vain).
        await sim.stop()
        await asyncio.sleep(0.5)
        ready.put(Served(port, connections, recording))
        while not stop.is_set():  # noqa: ASYNC110 (a thread's event)
            await asyncio.sleep(0.1)
    except BaseException as exc:
        ready.put(exc)
        raise
    finally:
        server.should_exit = True
        await task
        await sim.stop()


async def _has_data(http: httpx.AsyncClient, route: str) -> bool:
    response = await http.get(route + ("&" if "?" in route else "?") + "wait=2000")
    return response.status_code == 200 and bool(response.json()["data"])


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The gateway in an event loop of its own (a thread), its exchange stopped."""
    ready: queue.Queue[Served | BaseException] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(_serve(ready, stop),), daemon=True)
    thread.start()
    got = ready.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    try:
        yield got
    finally:
        stop.set()
        thread.join(20)


def etag_of(served: Served, target: str) -> str:
    response = served.both(target, AUTH)
    match = re.search(rb"\r\netag: ([^\r]*)\r\n", response)
    assert match, response[:200]
    return match.group(1).decode()


WHOLE, PARSED = "_answer_whole", "_answer_fast"
# A tab in a header value: the parser's, not the plainest form the layer answers whole.
NOT_WHOLE = "X-Pad: a\tb"


@pytest.mark.parametrize("route", ROUTES)
def test_each_route_answers_the_same_bytes_fast_and_through_fastapi(served: Served, route: str) -> None:
    fast = served.both(route, AUTH)
    assert fast.startswith(b"HTTP/1.1 200 OK\r\n"), fast[:200]
    assert served.path == WHOLE
    served.both(route, AUTH, keep_alive=True)
    assert served.path == WHOLE
    served.both(route, AUTH, NOT_WHOLE)
    assert served.path == PARSED
    served.both(route, AUTH, NOT_WHOLE, keep_alive=True)
    assert served.path == PARSED
    served.both(route, AUTH, split=True)  # the head in two writes (most often two reads)
    assert served.path in (WHOLE, PARSED)
    served.both(route, AUTH, "Connection: keep-alive", keep_alive=True)
    assert served.path == WHOLE
    for closing in ("Connection: close", "Connection: Close", "Proxy-Connection: close", "Connection: upgrade"):
        served.both(route, AUTH, closing, keep_alive=True)
        assert served.path == (WHOLE if closing.startswith("Connection: ") and "close" in closing.lower()
                               else PARSED if "Proxy" in closing else served.path)
    etag = etag_of(served, route)
    for tag in (etag, f'"other", {etag}', '"other"'):
        answer = served.both(route, AUTH, f"If-None-Match: {tag}")
        assert answer.startswith(b"HTTP/1.1 304 " if etag in tag else b"HTTP/1.1 200 ")
        assert served.path == WHOLE
    separator = "&" if "?" in route else "?"
    served.both(route + separator + "wait=0", AUTH)
    assert served.path == WHOLE


GOOD_SPELLINGS = [
    "/v1/orderbook/btc_usd?step=0.01",
    "/v1/orderbook/BTC-USD?step=0.010",
    "/v1/orderbook/BTC_USD?step=.01",
    "/v1/orderbook/ETH_BTC?step=1e-8",
    "/v1/kline/BTC_USD?range=60000",
    "/v1/klines/BTC_USD?range=1m&limit=1",
    "/v1/klines/BTC_USD?limit=1000&range=1m",
    "/v1/trades/BTC_USD?limit=1",
    "/v1/trades/BTC_USD?limit=1000&unknown=1",
    "/v1/account/orders?state=new&symbol=BTC_USD",
    "/v1/account/orders?state=cancel",
    "/v1/account/fills?limit=3",
    "/v1/orderbook/BTC%2FUSD?step=0.01",
    "/v1/orderbook/btc%2fusd?step=0.01",
    "/v1/orderbook/BTC_USD?step=0%2E01",
    "/v1/orderbook/BTC_USD?step=0.01&wait=0",
    "/v1/orderbook/BTC_USD?step=0.01&wait=10000",
    "/v1/account/assets/",
]
BAD_INPUT = [
    "/v1/orderbook/BTC_USD",
    "/v1/orderbook/BTC_USD?step=0.5",
    "/v1/orderbook/BTC_USD?step=",
    "/v1/orderbook/BTC_USD?step=abc",
    "/v1/orderbook/BTCUSD?step=0.01",
    "/v1/orderbook/BTC_USD?step=0.01&step=0.1&wait=0",
    "/v1/orderbook/DOGE_USD?step=0.01&wait=0",
    "/v1/orderbook/ETH_USD?step=0.01&wait=0",
    "/v1/orderbook/BTC_USD?step=0.01&wait=abc",
    "/v1/orderbook/BTC_USD?step=0.01&wait=-1",
    "/v1/orderbook/BTC_USD?step=0.01&wait=99999999",
    "/v1/orderbook/BTC_USD/extra?step=0.01",
    "/v1/orderbook/?step=0.01",
    "/v1/orderbook/" + "A" * 3000 + "?step=0.01",
    "/v1/depth/",
    "/v1/depth/BTC_",
    "/v1/depth/BTC_USD?wait=1.5",
    "/v1/kline/BTC_USD",
    "/v1/kline/BTC_USD?range=7m",
    "/v1/kline/BTC_USD?range=1m&range=5m&wait=0",
    "/v1/klines/BTC_USD?range=1m&limit=0",
    "/v1/klines/BTC_USD?range=1m&limit=1001",
    "/v1/klines/BTC_USD?range=1m&limit=ten",
    "/v1/trades/BTC_USD?limit=-5",
    "/v1/trades/BTC_USD?limit=" + "9" * 400,
    "/v1/trades/ETH_BTC?wait=0",
    "/v1/account/orders?state=open",
    "/v1/account/orders?symbol=NOPE",
    "/v1/account/fills?limit=0",
    "/v1/account/assetsX",
]


@pytest.mark.parametrize("target", GOOD_SPELLINGS + BAD_INPUT)
def test_other_spellings_and_bad_input_answer_the_same(served: Served, target: str) -> None:
    response = served.both(target, AUTH)
    status = int(response.split(b" ", 2)[1])
    if target in BAD_INPUT:
        assert 400 <= status < 600, response[:300]
        assert b"Traceback" not in response
        assert served.path is None
    else:
        assert status == (307 if target.endswith("/") else 200), response[:300]


@pytest.mark.parametrize("route", ["/v1/account/assets", "/v1/account/orders", "/v1/account/fills"])
def test_the_private_routes_answer_the_same_without_a_good_token(served: Served, route: str) -> None:
    for headers in ((), ("Authorization: Bearer wrong-token-0000000000",), ("Authorization: Basic abc",),
                    ("Authorization: Bearer",), ("Authorization: Bearer wrong-token-0000000000", AUTH)):
        response = served.both(route, *headers)
        assert response.startswith(b"HTTP/1.1 401 "), response[:200]
    # Two headers: the first counts, on both paths.
    assert served.both(route, AUTH, "Authorization: Bearer wrong-token-0000000000").startswith(b"HTTP/1.1 200 ")


def test_headers_the_fast_path_leaves_to_fastapi_answer_the_same(served: Served) -> None:
    route = "/v1/orderbook/BTC_USD?step=0.01"
    for headers in (("Origin: http://elsewhere.test",), ("X-Forwarded-For: 10.1.2.3",),
                    ("Forwarded: for=10.1.2.3",), ("If-None-Match: *",), ("If-None-Match:",),
                    ("Accept: text/html",), ("Accept-Encoding: gzip",)):
        served.both(route, AUTH, *headers)


def test_a_kept_alive_connection_goes_back_and_forth_between_the_paths(served: Served) -> None:
    book = "/v1/orderbook/BTC_USD?step=0.01"
    targets = [book, "/v1/orderbook/BTC_USD?step=0.5", "/v1/trades/BTC_USD?limit=2", "/v1/channels", book,
               "/v1/account/assets", "/v1/kline/BTC_USD?range=1m"]
    alone = [raw(served.port, target, (AUTH,), keep_alive=True) for target in targets]
    answered = len(served.fast.answered)
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        for index, target in enumerate(targets):
            data = request(target, (AUTH,), keep_alive=True)
            if index % 3 == 2:  # now and then in two writes
                sock.sendall(data[:7])
                time.sleep(0.05)
                data = data[7:]
            sock.sendall(data)
            answer = response_of(sock, keep_alive=True)
            if target != "/v1/channels":  # its link report moves on
                assert answer == alone[index], target
            assert answer.startswith(b"HTTP/1.1 200 ") or "step=0.5" in target
    assert len(served.fast.answered) - answered == 5  # every one it can answer, on the one connection


def test_fast_answers_keep_a_connection_open_for_the_keep_alive_timeout_after_the_last(
        served: Served) -> None:
    """The fast path moves the keep-alive timer on rather than arming a new
    one per answer: answers that come within the timeout of each other keep
    the connection open past the first answer's timeout, and the connection is
    closed once idle for the timeout after the last."""
    book = request("/v1/orderbook/BTC_USD?step=0.01", (AUTH,), keep_alive=True)
    answered = len(served.fast.answered)
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        first = last = time.monotonic()
        while last - first < 1.5 * KEEPALIVE_S:
            sock.sendall(book)
            assert response_of(sock, keep_alive=True).startswith(b"HTTP/1.1 200 ")
            last = time.monotonic()
            time.sleep(KEEPALIVE_S / 4)
        assert sock.recv(1) == b""  # closed by the gateway, once idle
        idle = time.monotonic() - last
    assert KEEPALIVE_S - 0.1 <= idle < KEEPALIVE_S + 5, idle
    kept = served.fast.answered[answered:]
    assert kept and all(path == WHOLE for _, path in kept), kept


def test_what_the_fast_path_keeps_of_requests_stays_bounded(served: Served) -> None:
    """Requests of bytes never seen before (a Host of their own each) are
    answered alike, and what is kept of them (the requests read, the requests
    prepared, the header lines made) never grows past its bound; a head too
    big to keep is answered all the same, and not kept."""
    guard, fast = served.connections, served.fast.fast
    guard.wholes.clear()
    fast._prepared.clear()
    target = "/v1/kline/BTC_USD?range=1m"
    alone = raw(served.port, target, (AUTH,), keep_alive=True)
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        for index in range(WHOLES_MAX + 100):
            data = request(target, (AUTH,), keep_alive=True)
            sock.sendall(data.replace(b"Host: 127.0.0.1", b"Host: h%d" % index))
            assert response_of(sock, keep_alive=True) == alone
            assert len(guard.wholes) <= WHOLES_MAX and len(fast._prepared) <= _KEPT_MAX
            assert len(fast._header_lines) <= _KEPT_MAX
        assert len(guard.wholes) == 100 + 1  # forgotten once at the bound, and filled again
        kept = len(guard.wholes), len(fast._prepared)
        many = tuple(f"X-H{index}: {index}" for index in range(WHOLE_KEPT_HEADERS + 1))
        sock.sendall(request(target, (AUTH, *many), keep_alive=True))
        assert response_of(sock, keep_alive=True) == alone
    assert (len(guard.wholes), len(fast._prepared)) == kept


def test_a_head_built_to_make_a_pattern_backtrack_harms_nothing(served: Served) -> None:
    """Many header lines of spaces, then a byte no head may hold: the plainest
    form fails at once (no pattern that backtracks with the lines), the parser
    answers 400, and the gateway answers others meanwhile."""
    head = b"GET /v1/trades/BTC_USD HTTP/1.1\r\n" + b"a:  \r\n" * 400 + b"\x00"
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head)
        with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 200
        assert response_of(sock, keep_alive=False).startswith(b"HTTP/1.1 400 ")


def test_pipelined_and_odd_heads_go_to_the_parser(served: Served) -> None:
    book = request("/v1/orderbook/BTC_USD?step=0.01", (AUTH,), keep_alive=True)
    answered = len(served.fast.answered)
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        last = request("/v1/orderbook/BTC_USD?step=0.01", (AUTH,))  # Connection: close
        sock.sendall(book + last)  # two at once: the parser's
        both = response_of(sock, keep_alive=False)
    assert both.count(b"HTTP/1.1 200 OK\r\n") == 2 and both.startswith(b"HTTP/1.1 200 "), both[:200]
    for odd in (b"GET /v1/depth/BTC_USD HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                b"GET /v1/depth/BTC_USD HTTP/1.1\nHost: x\n\n",
                b"GET /v1/depth/BTC_USD HTTP/1.1\r\nHost : x\r\n\r\n",
                b"GET /v1/depth/BTC_USD HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                b"GET /v1/depth/BTC_USD#x HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET http://x/v1/depth/BTC_USD HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(odd)
            sock.shutdown(socket.SHUT_WR)
            assert response_of(sock, keep_alive=False).startswith(b"HTTP/1.1 "), odd
    assert all(path == PARSED for _, path in served.fast.answered[answered:])
