"""The MQTT side: one :class:`UpstreamLink` per upstream connection.

Theory of operation: a link is one MQTT 3.1.1 session (clean session) and the
topics it carries. Its supervisor task connects, subscribes to every topic,
then hands each message to ``on_message(topic, payload, received_ts)``. When the
session fails (refused login, refused subscription, broken transport, or a
public link silent for longer than ``silence_s``) the supervisor logs the change
once, waits with capped exponential backoff and jitter, and starts again with a
fresh login (the private login is signed anew each time). The backoff is reset
once a subscription succeeds. A session that ends in silence after a session
that did not is followed by a new login at once, with no wait, so that the
reconnect loses as few pushes as it can; a second silent session in a row
backs off as any failure does (no tight loop, whatever ``silence_s``).
Nothing here waits forever.

aiomqtt (on paho) does every MQTT packet and the session; its errors become a
link state with a reason here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from app.ingest.credentials import Login
from app.protocols import mqtt

log = logging.getLogger("coinsuper_gateway.upstream")
mqtt.apply()  # WebSocket pongs masked, as RFC 6455 asks of a client (see app/protocols/mqtt.py)

MessageSink = Callable[[str, bytes, int], None]
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


class LinkState(StrEnum):
    CONNECTING = "connecting"  # never connected yet, or reconnecting after a drop
    UP = "up"  # connected and subscribed
    FAILED = "failed"  # the broker refused the login or a subscription


class Link(Protocol):
    """What the upstream and the reports need of a link: an MQTT one, or a
    stand-in fed from a recording."""

    name: str
    state: LinkState
    connects: int
    topics: set[str]
    up_since: float | None  # monotonic time it last came up; None while it is not up

    @property
    def reason(self) -> str | None: ...

    def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def add_topic(self, topic: str) -> None: ...
    async def remove_topic(self, topic: str) -> None: ...
    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the upstream broker is, from ``COINSUPER_URL``."""

    host: str
    port: int
    transport: Literal["tcp", "websockets"]
    tls: bool
    websocket_path: str | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme
        websocket = scheme in ("ws", "wss")
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or DEFAULT_PORTS[scheme],
            transport="websockets" if websocket else "tcp",
            tls=scheme in ("mqtts", "wss"),
            websocket_path=(parts.path or "/mqtt") if websocket else None,
        )

    def __str__(self) -> str:
        scheme = {("tcp", False): "mqtt", ("tcp", True): "mqtts"}.get(
            (self.transport, self.tls), "wss" if self.tls else "ws"
        )
        return f"{scheme}://{self.host}:{self.port}{self.websocket_path or ''}"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter."""

    first_s: float = 0.5
    cap_s: float = 5.0

    def delay(self, attempt: int) -> float:
        base = min(self.cap_s, self.first_s * float(2 ** min(attempt, 30)))
        return base * random.uniform(0.5, 1.0)


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """The TLS context of ``mqtts://`` and ``wss://`` links: the server's
    certificate verified (against ``ca_file`` where one is given, else the
    system's CAs) and its host name checked; a client certificate if given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


def tls_refusal(exc: BaseException) -> str | None:
    """A readable reason when ``exc`` (or what it wraps) is a TLS verification
    failure: a wrong certificate is not mended by trying again soon."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: {seen.verify_message or 'certificate verify failed'}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__
    return None


class LinkFailure(Exception):
    """Why a session ended; the reason is safe to show (no secret in it)."""

    def __init__(self, reason: str, *, refused: bool = False, silent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused
        self.silent = silent  # a subscribed session that received nothing for silence_s


class UpstreamLink:
    """One MQTT connection and the topics it carries, kept up by its supervisor."""

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        login: Callable[[], Login],
        topics: set[str],
        on_message: MessageSink,
        *,
        qos: int = 0,
        keepalive_s: int = 60,
        silence_s: float | None = None,
        backoff: Backoff | None = None,
        on_state: Callable[[UpstreamLink], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.login = login
        self.topics = set(topics)
        self.on_message = on_message
        self.qos = qos
        self.keepalive_s = keepalive_s
        self.silence_s = silence_s
        self.backoff = backoff or Backoff()
        self.on_state = on_state
        self.tls = tls if tls is not None or not endpoint.tls else tls_context()
        self.state = LinkState.CONNECTING
        self.reason: str | None = None
        self.connects = 0
        self.attempts = 0
        self.up_since: float | None = None
        self.last_message_ts: int | None = None
        self._client: aiomqtt.Client | None = None
        self._subscribed = False
        self._task: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"link {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def add_topic(self, topic: str) -> None:
        """Carry one more topic; subscribed at once if the link is up."""
        self.topics.add(topic)
        client = self._client
        if client is not None and self.state is LinkState.UP:
            # On failure the supervisor sees the broken session and subscribes again.
            with contextlib.suppress(aiomqtt.MqttError, LinkFailure):
                await self._subscribe(client, [topic])

    async def remove_topic(self, topic: str) -> None:
        self.topics.discard(topic)
        client = self._client
        if client is not None and self.state is LinkState.UP:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic, timeout=10)

    # --- the supervisor --------------------------------------------------

    def _set_state(self, state: LinkState, reason: str | None) -> None:
        if (state, reason) == (self.state, self.reason):
            return
        self.state, self.reason = state, reason
        self.up_since = time.monotonic() if state is LinkState.UP else None
        level = logging.WARNING if state is not LinkState.UP else logging.INFO
        log.log(level, "link %s %s%s", self.name, state.value, f": {reason}" if reason else "")
        if self.on_state is not None:
            self.on_state(self)

    async def _supervise(self) -> None:
        failures = 0
        silent = False
        while True:
            self.attempts += 1
            self._subscribed = False
            silent_before, silent = silent, False
            try:
                await self._session()
            except LinkFailure as exc:
                silent = exc.silent
                self._set_state(
                    LinkState.FAILED if exc.refused else LinkState.CONNECTING, exc.reason
                )
            except aiomqtt.MqttError as exc:
                tls = tls_refusal(exc)
                refused = isinstance(exc, MqttConnectError) or tls is not None
                self._set_state(
                    LinkState.FAILED if refused else LinkState.CONNECTING, tls or _describe(exc)
                )
            except OSError as exc:
                tls = tls_refusal(exc)
                if tls is not None:
                    self._set_state(LinkState.FAILED, tls)
                else:
                    self._set_state(LinkState.CONNECTING, f"{type(exc).__name__}: {exc.strerror}")
            except Exception as exc:  # a library fault must not end the supervisor
                log.exception("link %s: unexpected error", self.name)
                self._set_state(LinkState.CONNECTING, type(exc).__name__)
            finally:
                self._client = None
            if self._subscribed:
                failures = 0
            if silent and not silent_before:
                # The broker took the last login and subscription: try again at
                # once, so that as few pushes as can be are lost to the
                # reconnect (a clean session keeps nothing across it). A failed
                # or silent attempt after it backs off as any other.
                continue
            delay = self.backoff.delay(failures)
            failures += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        login = self.login()
        tls = self.tls if self.endpoint.tls else None
        client = aiomqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            identifier=login.client_id,
            username=login.username,
            password=login.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            transport=self.endpoint.transport,
            websocket_path=self.endpoint.websocket_path,
            tls_context=tls,
            keepalive=self.keepalive_s,
            timeout=10,
            max_queued_incoming_messages=10_000,
        )
        try:
            async with client:
                self._client = client
                self.connects += 1
                await self._subscribe(client, sorted(self.topics))
                self._subscribed = True
                self._set_state(LinkState.UP, None)
                await self._receive(client)
        finally:
            mqtt.retrieve_disconnection(client)

    async def _subscribe(self, client: aiomqtt.Client, topics: list[str]) -> None:
        if not topics:
            return
        granted = await client.subscribe([(topic, self.qos) for topic in topics], timeout=10)
        for topic, code in zip(topics, granted, strict=False):
            if _is_failure(code):
                raise LinkFailure(f"subscription to {topic} refused", refused=True)

    async def _receive(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        silence = self.silence_s
        try:
            async with asyncio.timeout(silence) as deadline:
                async for message in client.messages:
                    received_ts = time.time_ns() // 1_000_000
                    self.last_message_ts = received_ts
                    payload = message.payload
                    if not isinstance(payload, bytes | bytearray):
                        payload = str(payload).encode()
                    self.on_message(message.topic.value, bytes(payload), received_ts)
                    if silence is not None:
                        deadline.reschedule(loop.time() + silence)
        except TimeoutError:
            raise LinkFailure(
                f"no message for {silence:g} s: link taken as dead", silent=True
            ) from None
        raise LinkFailure("message stream ended")

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "endpoint": str(self.endpoint),
            "state": self.state.value,
            "reason": self.reason,
            "connects": self.connects,
            "attempts": self.attempts,
            "topics": len(self.topics),
            "last_message_ts": self.last_message_ts,
        }


def _is_failure(code: object) -> bool:
    if isinstance(code, ReasonCode):
        return bool(code.is_failure)
    return isinstance(code, int) and code >= 0x80


def _describe(exc: aiomqtt.MqttError) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause):
        text += f" ({cause})"
    return text[:200]
