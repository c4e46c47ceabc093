"""The HTTP server's connection layer: limits enforced where the bytes arrive.

uvicorn's httptools protocol parses requests for every route, and it has no
limit of its own on the request line or the header block (httptools buffers
whatever comes), no deadline for a request head (a byte every few seconds keeps
a connection forever), and no cap on open connections (the file-descriptor
limit is then a full outage). :class:`GuardedProtocol` is that protocol with
those limits; :class:`ConnectionGuard` is the state the connections share.

Theory of operation:

- A connection is admitted in ``connection_made`` if the gateway holds fewer
  than ``GATEWAY_MAX_CONNECTIONS`` and its address fewer than
  ``GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`` (trusted proxies are not counted by
  address). At the overall cap, the connection that has waited longest for a
  request head is closed to make room: an idle keep-alive or a slowloris
  connection costs nothing to drop, and a client that sends its request at
  once (a health probe) gets in. Only when every connection is busy is the
  new one refused, at once, with a ``503`` problem.
- From the start of a connection, and from the start of every later request
  on it, the request head must be complete within ``GATEWAY_HEADER_TIMEOUT_S``
  (``408`` and close otherwise). Between requests uvicorn's keep-alive timeout
  applies (``GATEWAY_KEEPALIVE_TIMEOUT_S``).
- Bytes are counted as they arrive, before the parser buffers them: a request
  line over ``GATEWAY_MAX_REQUEST_LINE`` is answered ``414``, a head over
  ``GATEWAY_MAX_HEADER_BYTES`` ``431``, each a problem, and the connection is
  closed.
- The transport is put in the request's scope (``TRANSPORT``). A stream
  response takes the connection over once its head is sent
  (:meth:`GuardedProtocol.hand_over`): the request is then complete for
  uvicorn, its task ends, and from there the fan-out writes to the transport
  (app/http/sinks.py); flow control and the loss of the connection go to the
  stream's subscription, and bytes the client sends are ignored (past
  ``UNSOLICITED_MAX``, the connection is closed).
- A ``GET`` whose answer is stored bytes is answered here by the guard's
  ``fast`` routes (app/http/fast.py). A request that arrives whole in one read,
  in the plainest form (``WHOLE_GET``: HTTP/1.1, a printable target, token
  headers, none of ``NOT_PLAIN``, within the head limits) on a connection
  whose parser stands between messages, is answered before the parser sees
  it (the parser, the scope and the head deadline cost more than the answer);
  any other is asked about when its head is complete. Either way it is written as
  uvicorn writes a response (its status line, its default headers, the same
  access-log line, ``connection: close`` where it would close), with no ASGI
  cycle, task or middleware. Only with nothing in flight on the connection and
  its transport not full: otherwise, as for whatever ``fast`` declines, the
  request goes to the app, whose path waits for the client to drain.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import resource
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

from app.http.problems import PROBLEM_MEDIA_TYPE, TYPE_BASE

log = logging.getLogger("coinsuper_gateway.http")

# Where GuardedProtocol puts the connection's transport in the scope.
TRANSPORT = "coinsuper.transport"
# Bytes a client may send on a connection a stream has taken over.
UNSOLICITED_MAX = 65536
# File descriptors kept back from the connection cap: upstream links, logs,
# recordings, the listener itself.
FD_HEADROOM = 256

# A request the connection layer may answer before the parser sees it: a
# whole GET of /v1/ in HTTP/1.1, its target printable ASCII with no fragment,
# each header a token, a colon and printable ASCII, nothing after the head.
# Each part can match only one way (no backtracking that grows with the head:
# a space after the colon belongs to the value, and WHOLE_HEADER strips it).
WHOLE_GET = re.compile(
    rb"GET (/v1/[!-\x22\x24-~]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ -~]*\r\n)*)\r\n"
)
WHOLE_HEADER = re.compile(rb"([^:\r\n]+):[ \t]*([^\r\n]*)\r\n")
WHOLE_MAX = 4096  # a longer head goes to the parser
# Headers that make a request other than plain: the parser and the app judge it.
NOT_PLAIN = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"te",
        b"trailer",
        b"proxy-connection",  # llhttp reads it as Connection
    )
)

# A request that came whole, as this layer reads it: its path, its query, its
# headers (names in lower case) and whether the connection stays open after it.
Whole = tuple[bytes, bytes, list[tuple[bytes, bytes]], bool]
# Requests read before, by their bytes (a poller sends the same bytes again and
# again): at most this many, then forgotten at once; only heads of at most
# WHOLE_KEPT_BYTES and WHOLE_KEPT_HEADERS are kept (a big head is read anew).
WHOLES_MAX = 1024
WHOLE_KEPT_BYTES = 1024
WHOLE_KEPT_HEADERS = 32

# A response the connection layer writes itself: status, its header lines
# (after uvicorn's default ones, each ending in CRLF), body.
FastAnswer = tuple[int, bytes, bytes]


class FastRoutes(Protocol):
    def answer(
        self,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        key: bytes | None = None,
    ) -> FastAnswer | None:
        """The answer, or None for the framework's. ``key``: the request's
        bytes, when they are all it depends on (an answer may keep what it
        worked out of them)."""
        ...


def read_whole(data: bytes, max_request_line: int) -> Whole | None:
    """A request that came whole in ``data``, if it has strictly the plainest
    form: :data:`WHOLE_GET`, a request line within ``max_request_line``, none
    of the headers of :data:`NOT_PLAIN`, a ``Connection`` of ``keep-alive``
    or ``close`` if any; else None (the parser and the app judge it)."""
    match = WHOLE_GET.fullmatch(data)
    if match is None or len(match[1]) > max_request_line:
        return None
    headers = [
        (name.lower(), value.rstrip(b" \t")) for name, value in WHOLE_HEADER.findall(match[2])
    ]
    keep_alive = True
    for name, value in headers:
        if name in NOT_PLAIN:
            return None
        if name == b"connection":
            token = value.lower()
            if token == b"close":
                keep_alive = False
            elif token != b"keep-alive":
                return None
    path, _, query = match[1].partition(b"?")
    return path, query, headers, keep_alive


class _Answered:
    """What stands for uvicorn's request cycle once the connection layer has
    answered a request itself: complete, with nothing to wake."""

    response_complete = True
    disconnected = False
    keep_alive = True

    class message_event:  # an asyncio.Event's one method that uvicorn calls
        @staticmethod
        def set() -> None:
            pass


ANSWERED: Any = _Answered()


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1_048_576)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # pragma: no cover (a container may refuse)
            pass
    return soft


def connection_cap(configured: int, fd_limit: int) -> int:
    """The cap on open connections: the configured one (0: automatic), never
    closer to the file-descriptor limit than the headroom."""
    ceiling = max(16, fd_limit - max(FD_HEADROOM, fd_limit // 20))
    return ceiling if configured <= 0 else min(configured, ceiling)


@dataclass
class Limits:
    """The connection limits, from the settings (see README, "Limits and hardening")."""

    max_connections: int = 10_000
    max_per_address: int = 1000
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    header_timeout_s: float = 10.0
    trusted: tuple[IPv4Network | IPv6Network, ...] = ()

    def is_trusted(self, address: str) -> bool:
        """Whether ``address`` is a trusted proxy (not counted by address)."""
        if not self.trusted:
            return False
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)


@dataclass
class ConnectionGuard:
    """What every connection of the server shares: counts, who waits for a
    head, and what the fast path keeps of requests and heads it wrote."""

    limits: Limits
    open: int = 0
    by_address: Counter[str] = field(default_factory=Counter)
    # Connections waiting for a request head, oldest first.
    waiting: OrderedDict[GuardedProtocol, float] = field(default_factory=OrderedDict)
    refused: Counter[str] = field(default_factory=Counter)  # by reason, for /metrics
    # The routes this layer answers itself (app/http/fast.py); None: every one goes to the app.
    fast: FastRoutes | None = None
    # Requests that came whole, read (:data:`WHOLES_MAX`); None: not plain.
    wholes: dict[bytes, Whole | None] = field(default_factory=dict, init=False, repr=False)
    # A status line and uvicorn's default headers, joined, by status, for
    # the default headers of the moment (uvicorn makes a new list each second).
    _status_heads: dict[int, bytes] = field(default_factory=dict, init=False, repr=False)
    _status_heads_of: object = field(default=None, init=False, repr=False)

    def head(self, status: int, defaults: list[tuple[bytes, bytes]]) -> bytes:
        """The status line and ``defaults`` (uvicorn's date and server
        headers), as uvicorn writes them."""
        if defaults is not self._status_heads_of:
            self._status_heads_of = defaults
            self._status_heads = {}
        head = self._status_heads.get(status)
        if head is None:
            lines = [STATUS_LINE[status]]
            for name, value in defaults:
                lines += (name, b": ", value, b"\r\n")
            head = self._status_heads[status] = b"".join(lines)
        return head

    def protocol(self) -> type[GuardedProtocol]:
        """The protocol class for uvicorn's ``http`` setting, bound to this guard."""
        return type("GuardedHttpProtocol", (GuardedProtocol,), {"guard": self})

    def release(self, address: str | None) -> None:
        """A connection admitted (of ``address``, if counted by address) is gone."""
        self.open -= 1
        if address is not None:
            self.by_address[address] -= 1
            if self.by_address[address] <= 0:
                del self.by_address[address]

    def make_room(self) -> bool:
        """At the overall cap, close the connection that has waited longest
        for a request head; False when none waits (every one is busy)."""
        while self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            if not oldest.transport.is_closing():
                oldest.reject(503, "connection closed to make room for another", close_only=True)
                self.refused["evicted"] += 1
                return True
        return False


_REASONS = {
    408: "Request Timeout",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def problem_bytes(status: int, detail: str, extensions: dict[str, Any] | None = None) -> bytes:
    """A whole HTTP/1.1 response carrying a problem, with ``Connection: close``."""
    title = _REASONS[status]
    body = json.dumps(
        {
            "type": TYPE_BASE + title.lower().replace(" ", "-"),
            "title": title,
            "status": status,
            "detail": detail,
            **(extensions or {}),
        }
    ).encode()
    retry = b"retry-after: 1\r\n" if status in (429, 503) else b""
    return (
        f"HTTP/1.1 {status} {title}\r\n".encode()
        + f"content-type: {PROBLEM_MEDIA_TYPE}\r\ncontent-length: {len(body)}\r\n".encode()
        + retry
        + b"connection: close\r\n\r\n"
        + body
    )


class TakenOver:
    """Flow control passed on to the stream that took a connection over (a
    subscription: ``pause``, ``resume``): mixed into the gateway's HTTP and
    WebSocket protocols, before uvicorn's."""

    taken: Any = None

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self.taken is not None:
            self.taken.pause()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self.taken is not None:
            self.taken.resume()


class GuardedProtocol(TakenOver, HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring."""

    guard: ConnectionGuard  # set on the class by ConnectionGuard.protocol

    _address: str | None = None
    _admitted = False
    _head_bytes = 0
    _in_head = True
    # The parser stands between two messages (nothing of a request buffered in it).
    _between = True
    _deadline: asyncio.TimerHandle | None = None
    # The keep-alive timeout runs to this loop time at least (a fast answer's).
    _kept_until = 0.0
    # What the client of a connection a stream took over sent since.
    _unsolicited = 0

    # --- admission ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        limits = guard.limits
        address = self.client[0] if self.client else "unknown"
        counted = not limits.is_trusted(address)
        if counted and guard.by_address[address] >= limits.max_per_address:
            self._refuse(
                "per_address",
                429,
                "this address has as many connections open as it may",
                "connections per address",
                limits.max_per_address,
            )
            return
        if guard.open >= limits.max_connections and not guard.make_room():
            self._refuse(
                "overall",
                503,
                "the gateway has as many connections open as it serves",
                "open connections",
                limits.max_connections,
            )
            return
        self._admitted = True
        guard.open += 1
        if counted:
            self._address = address
            guard.by_address[address] += 1
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        taken, self.taken = self.taken, None
        super().connection_lost(exc)
        if taken is not None:
            taken.lost()

    # --- a stream's connection ---------------------------------------------

    def hand_over(self, stream: Any) -> bool | None:
        """Give the connection to ``stream`` (a subscription: ``pause``,
        ``resume``, ``lost``) once its response head is sent. The request is
        then complete as far as uvicorn is concerned (no keep-alive after it),
        and what only the request needed is let go: a stream holds a socket,
        not a request. Returns whether the body is chunked; None if the
        connection is gone."""
        cycle = self.cycle
        if cycle is None or cycle.disconnected or self.transport.is_closing():
            return None
        self.taken = stream
        cycle.response_complete = True
        cycle.keep_alive = False
        self._stop_deadline()
        self.cycle = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]
        self.headers = []
        return bool(cycle.chunked_encoding)

    def _release(self) -> None:
        self._stop_deadline()
        if self._admitted:
            self._admitted = False
            self.guard.release(self._address)

    def _refuse(self, counted_as: str, status: int, detail: str, limit: str, cap: int) -> None:
        """Count a refusal by its reason (for /metrics), answer the problem, close."""
        self.guard.refused[counted_as] += 1
        self.reject(status, detail, {"limit": limit, "cap": cap})

    def reject(
        self,
        status: int,
        detail: str,
        extensions: dict[str, Any] | None = None,
        *,
        close_only: bool = False,
    ) -> None:
        """Answer with a problem (unless ``close_only``) and close the connection."""
        self._stop_deadline()
        transport = self.transport
        if not transport.is_closing():
            if not close_only:
                transport.write(problem_bytes(status, detail, extensions))
            transport.close()
            # A peer that does not read must not keep the socket by it.
            asyncio.get_running_loop().call_later(1.0, transport.abort)

    # --- the request head ----------------------------------------------------

    def _await_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self.guard.waiting[self] = time.monotonic()
        if self._deadline is None:
            self._deadline = self.loop.call_later(
                self.guard.limits.header_timeout_s, self._head_too_slow
            )

    def _stop_deadline(self) -> None:
        self.guard.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        self.guard.refused["header_timeout"] += 1
        seconds = self.guard.limits.header_timeout_s
        self.reject(408, f"the request head was not complete within {seconds:g} s")

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self.taken is not None:
            self._unsolicited += len(data)
            if self._unsolicited > UNSOLICITED_MAX:
                self.transport.abort()
            return
        fast = self.guard.fast
        if fast is not None and self._between and self._answer_whole(fast, data):
            return
        if not self._in_head:
            super().data_received(data)
            # Bytes that began no request (a stray CRLF, the end of a body
            # already answered) cancelled the keep-alive timer: idle again.
            if (
                self._between
                and self.timeout_keep_alive_task is None
                and self._idle()
                and not self.transport.is_closing()
                and self.transport.get_protocol() is self  # not upgraded to a WebSocket
            ):
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._check_head()

    def _check_head(self) -> None:
        limits = self.guard.limits
        # httptools hands the URL over as it arrives, so its length so far is
        # the request line's, finished or not.
        if len(getattr(self, "url", b"")) > limits.max_request_line:
            self._refuse(
                "request_line",
                414,
                f"the request line is longer than {limits.max_request_line} bytes",
                "request line bytes",
                limits.max_request_line,
            )
        elif self._head_bytes > limits.max_header_bytes:
            self._refuse(
                "header_bytes",
                431,
                f"the request head is larger than {limits.max_header_bytes} bytes",
                "request head bytes",
                limits.max_header_bytes,
            )

    def on_message_begin(self) -> None:
        self._between = False
        super().on_message_begin()
        if not self._in_head:  # a later request on a kept-alive connection
            self._await_head()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._between = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._check_head()
        if self.transport.is_closing():
            return
        self._stop_deadline()
        fast = self.guard.fast
        if fast is not None and self._answer_fast(fast):
            return
        self.scope[TRANSPORT] = self.transport  # type: ignore[literal-required]
        super().on_headers_complete()

    def _idle(self) -> bool:
        """Nothing in flight on the connection, and its transport not full."""
        cycle = self.cycle
        return not (
            self.pipeline
            or (cycle is not None and not cycle.response_complete)
            or self.flow.write_paused
        )

    def _answer_whole(self, fast: FastRoutes, data: bytes) -> bool:
        """Answer a plain ``GET`` that came whole in ``data`` here, before the
        parser sees it, if ``fast`` can (the module docstring): a request of
        strictly the plainest form (:func:`read_whole`), else the parser has it."""
        limits = self.guard.limits
        if (
            len(data) > min(limits.max_header_bytes, WHOLE_MAX)
            or not data.startswith(b"GET /v1/")
            or not self._idle()
        ):
            return False
        wholes = self.guard.wholes
        key: bytes | None = data
        try:
            whole = wholes[data]
        except KeyError:
            whole = read_whole(data, limits.max_request_line)
            if len(data) > WHOLE_KEPT_BYTES or (whole and len(whole[2]) > WHOLE_KEPT_HEADERS):
                key = None  # read anew each time, and not kept prepared either
            else:
                if len(wholes) >= WHOLES_MAX:
                    wholes.clear()
                wholes[data] = whole
        if whole is None:
            return False
        path, query, headers, keep_alive = whole
        try:
            answer = fast.answer(path, query, headers, key)
        except Exception:  # a fault of ours: the framework answers it, as it would have
            log.exception("the fast path failed on %r; FastAPI answers it", path[:200])
            return False
        if answer is None:
            return False
        self._in_head = False
        self._stop_deadline()
        self._write_fast(answer, keep_alive, path, query, "1.1")
        return True

    def _answer_fast(self, fast: FastRoutes) -> bool:
        """Answer the request here if ``fast`` can (see the module docstring)."""
        parser = self.parser
        if parser.get_method() != b"GET" or parser.should_upgrade() or not self._idle():
            return False
        url = httptools.parse_url(self.url)
        query = url.query or b""
        answer = fast.answer(url.path, query, self.headers)
        if answer is None:
            return False
        version = parser.get_http_version()
        keep_alive = version != "1.0" and parser.should_keep_alive()
        self._write_fast(answer, keep_alive, url.path, query, version)
        return True

    def _write_fast(
        self, answer: FastAnswer, keep_alive: bool, path: bytes, query: bytes, version: str
    ) -> None:
        """Write a fast answer as uvicorn writes a response (its access line
        made only when it is logged), and complete it as uvicorn completes one."""
        status, head, body = answer
        content = (
            self.guard.head(status, self.server_state.default_headers),
            head,
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            # As uvicorn logs it (a request's scope holds this connection's client).
            client = get_client_addr({"client": self.client})  # type: ignore[arg-type]
            target = path + (b"?" + query if query else b"")
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d', client, "GET", target.decode("ascii"), version, status
            )
        self.cycle = ANSWERED
        transport = self.transport
        transport.write(b"".join(content))
        self.server_state.total_requests += 1
        if not keep_alive:
            transport.close()
        elif not transport.is_closing():
            # Idle again (first to go at the cap), for the keep-alive timeout
            # from now: a timer already armed is moved on when it fires
            # (:meth:`timeout_keep_alive_handler`) rather than made anew.
            self._kept_until = self.loop.time() + self.timeout_keep_alive
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
            self.guard.waiting[self] = time.monotonic()

    def timeout_keep_alive_handler(self) -> None:
        left = self._kept_until - self.loop.time()
        if left > 0 and not self.transport.is_closing():  # a fast answer since it was armed
            self.timeout_keep_alive_task = self.loop.call_later(
                left, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.guard.waiting[self] = time.monotonic()  # idle: first to go at the cap

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The WebSocket protocol takes the transport over: the slot is released
        # when that protocol loses the connection (by the guard and the
        # address: this protocol is done with, and is let go).
        upgraded: Any = self.transport.get_protocol()
        release = functools.partial(self.guard.release, self._address) if self._admitted else None
        self._stop_deadline()
        self._admitted = False
        if hasattr(upgraded, "release_slot"):  # the gateway's own (app/http/sinks.py)
            upgraded.release_slot = release
        elif release is not None:
            lost = upgraded.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                release()
                lost(exc)

            upgraded.connection_lost = connection_lost
        scope = getattr(upgraded, "scope", None)
        if isinstance(scope, dict):
            scope[TRANSPORT] = self.transport
