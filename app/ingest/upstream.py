"""Which channels are subscribed upstream, and the links that carry them.

A channel is subscribed when a client first asks for it (a REST request or a
stream) or at start from ``COINSUPER_SUBSCRIBE`` (those are pinned), and
released after ``GATEWAY_IDLE_RELEASE_S`` with no stream following it and no
REST request for it. The number of upstream subscriptions is capped, so that
no client can make the gateway subscribe to thousands of topics.

Made-up symbols must not hold that cap: a channel asked for by a client that
gets no data within ``GATEWAY_NO_DATA_RELEASE_S`` of its link being up is
released and remembered as unknown for ``GATEWAY_UNKNOWN_TTL_S`` (asking again
meanwhile is a 404 that subscribes nothing), and at most
``GATEWAY_MAX_PENDING_UPSTREAM`` channels may wait for their first data at
once, so that channels that carry data are never refused because of ones that
never will. A broker that is down is no symbol's fault: the wait counts only
while the link is up.

Public market topics get one link each by default, because the exchange's
client id names one topic; ``COINSUPER_SHARED_LINK`` puts them all on one link
(for brokers that do not enforce the one-topic-per-id rule).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.domain.channels import PRIVATE_KINDS, Channel
from app.domain.errors import ConfigError, TooMany, UnknownChannel
from app.domain.values import Json
from app.ingest.credentials import Login, private_login, public_client_id
from app.ingest.links import Backoff, Endpoint, Link, MessageSink, UpstreamLink, tls_context
from app.ingest.recording import ReplayLink, ReplaySource
from app.streams.hub import Hub

log = logging.getLogger("coinsuper_gateway.registry")

SHARED_LINK = "public"
PRIVATE_LINK = "private"
_UNKNOWN_CAP = 10_000  # channels remembered as unknown


@dataclass(slots=True)
class Tracked:
    """A channel subscribed upstream."""

    channel: Channel
    topic: str
    link: Link
    pinned: bool
    last_demand: float
    subscribed_at: float = 0.0


def _nowhere(topic: str, payload: bytes, received_ts: int) -> None:
    raise RuntimeError("the upstream's links have no pipeline to feed")


class Upstream:
    """The channels subscribed upstream, and their links."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        clock: Callable[[], float] = time.monotonic,
        *,
        replay: ReplaySource | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.clock = clock
        self.replay = replay
        # Where the links hand their messages: the ingest pipeline (set by the gateway).
        self.on_message: MessageSink = _nowhere
        self.endpoint = Endpoint.from_url(settings.coinsuper_url)
        self.tls = self._tls() if self.endpoint.tls else None
        self.templates = settings.topics
        self.tracked: dict[str, Tracked] = {}
        self.by_topic: dict[str, Channel] = {}
        self.links: dict[str, Link] = {}
        # Channels that got no data when last subscribed: name → until when (monotonic).
        self.unknown: OrderedDict[str, float] = OrderedDict()
        self.no_data_releases = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _tls(self) -> ssl.SSLContext:
        settings = self.settings
        try:
            return tls_context(
                settings.coinsuper_tls_ca_file,
                settings.coinsuper_tls_cert_file,
                settings.coinsuper_tls_key_file,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                "COINSUPER_TLS_CA_FILE, COINSUPER_TLS_CERT_FILE, COINSUPER_TLS_KEY_FILE: "
                f"cannot load them ({type(exc).__name__}: {exc})"
            ) from None

    # --- demand ------------------------------------------------------------

    def demand(self, channel: Channel, *, pinned: bool = False) -> Tracked:
        """Make sure ``channel`` is subscribed upstream; raise :class:`TooMany`
        when that would pass the cap."""
        now = self.clock()
        tracked = self.tracked.get(channel.name)
        if tracked is not None:
            tracked.last_demand = now
            tracked.pinned = tracked.pinned or pinned
            return tracked
        if not pinned:
            self._refuse_unknown(channel, now)
        cap = self.settings.gateway_max_upstream
        if len(self.tracked) >= cap:
            raise TooMany(
                "upstream subscriptions",
                f"{channel.name} would be subscribed upstream beyond the cap",
                cap,
            )
        pending_cap = self.settings.gateway_max_pending_upstream
        if not pinned and self.pending() >= pending_cap:
            raise TooMany(
                "channels waiting for first data",
                f"{channel.name} would wait for its first data with too many others",
                pending_cap,
            )
        topic = self.templates.topic(self.settings.coinsuper_env, channel)
        link = self._link_for(channel, topic)
        tracked = Tracked(channel, topic, link, pinned, now, now)
        self.tracked[channel.name] = tracked
        self.by_topic[topic] = channel
        log.info("subscribing %s upstream (topic %s)", channel.name, topic)
        return tracked

    def _refuse_unknown(self, channel: Channel, now: float) -> None:
        until = self.unknown.get(channel.name)
        if until is None:
            return
        if now >= until:
            del self.unknown[channel.name]
            return
        raise UnknownChannel(
            f"no data from the exchange for {channel.name} when it was last subscribed; "
            f"is the symbol right? (asked again in {until - now:.0f} s, it is tried again)"
        )

    def _waiting(self, tracked: Tracked) -> bool:
        """A channel a client asked for that has had no data yet."""
        if tracked.pinned or tracked.channel.is_private:
            return False
        state = self.hub.state(tracked.channel)
        return state is None or not state.has_data

    def pending(self) -> int:
        """Channels asked for by clients that wait for their first data."""
        return sum(1 for tracked in self.tracked.values() if self._waiting(tracked))

    def _link_for(self, channel: Channel, topic: str) -> Link:
        if self.settings.coinsuper_shared_link:
            link = self.links.get(SHARED_LINK)
            if link is None:
                # The per-topic id scheme applied to the topic prefix: a broker
                # that enforces one topic per id refuses this link.
                env = self.settings.coinsuper_env
                link = self.links[SHARED_LINK] = self._public_link(SHARED_LINK, env, set())
                link.start()
            self._spawn(link.add_topic(topic))
            return link
        link = self.links[channel.name] = self._public_link(channel.name, topic, {topic})
        link.start()
        return link

    def _public_link(self, name: str, id_topic: str, topics: set[str]) -> Link:
        settings = self.settings
        if self.replay is not None:
            return ReplayLink(name, topics, self.replay)
        login = Login(
            public_client_id(
                settings.coinsuper_access_key.get_secret_value(), settings.coinsuper_email, id_topic
            ),
            settings.coinsuper_public_username,
            settings.coinsuper_public_password.get_secret_value(),
        )
        return UpstreamLink(
            name,
            self.endpoint,
            lambda: login,
            topics,
            self.on_message,
            qos=settings.coinsuper_qos,
            keepalive_s=settings.coinsuper_keepalive_s,
            silence_s=settings.coinsuper_silence_s,
            backoff=Backoff(settings.coinsuper_reconnect_min_s, settings.coinsuper_reconnect_max_s),
            tls=self.tls,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def open_private(self) -> None:
        """Start the one private link: client id = access key, a login signed
        afresh at every connect, carrying the three private topics."""
        settings = self.settings
        access_key = settings.coinsuper_access_key.get_secret_value()
        secret_key = settings.coinsuper_secret_key.get_secret_value()
        email = settings.coinsuper_email
        channels = [Channel(kind) for kind in PRIVATE_KINDS]
        topics = {
            channel.name: self.templates.topic(settings.coinsuper_env, channel, email)
            for channel in channels
        }

        def login() -> Login:
            return private_login(access_key, secret_key, email, time.time_ns() // 1_000_000)

        link = UpstreamLink(
            PRIVATE_LINK,
            self.endpoint,
            login,
            set(topics.values()),
            self.on_message,
            qos=settings.coinsuper_qos,
            keepalive_s=settings.coinsuper_keepalive_s,
            silence_s=None,  # private topics push only on change: silence is normal
            backoff=Backoff(settings.coinsuper_reconnect_min_s, settings.coinsuper_reconnect_max_s),
            tls=self.tls,
        )
        self.links[PRIVATE_LINK] = link
        for channel in channels:
            topic = topics[channel.name]
            self.tracked[channel.name] = Tracked(channel, topic, link, True, self.clock())
            self.by_topic[topic] = channel
        log.info("subscribing the private feed upstream (%d topics)", len(topics))
        link.start()

    # --- routing ---------------------------------------------------------

    def route(self, topic: str) -> Channel | None:
        """The channel a topic carries (for the ingest pipeline); in a replay,
        every channel the recording holds is followed."""
        channel = self.by_topic.get(topic)
        if channel is None and self.replay is not None:
            channel = self._follow_recorded(topic)
        return channel

    def _follow_recorded(self, topic: str) -> Channel | None:
        """In a replay, every channel the recording holds is followed."""
        channel = self.templates.parse(self.settings.coinsuper_env, topic)
        if channel is None:
            return None
        if channel.is_private and self.replay is not None:
            link = self.links.setdefault(PRIVATE_LINK, ReplayLink(PRIVATE_LINK, set(), self.replay))
            link.topics.add(topic)
            self.tracked[channel.name] = Tracked(channel, topic, link, True, self.clock())
            self.by_topic[topic] = channel
            return channel
        try:
            self.demand(channel, pinned=True)
        except TooMany:
            return None
        return channel

    # --- release -----------------------------------------------------------

    async def release_idle(self) -> list[Channel]:
        """Release the channels nobody followed or asked for within the idle
        time, and those the exchange sent nothing for (see the module docstring)."""
        idle_s = self.settings.gateway_idle_release_s
        now = self.clock()
        released = []
        for tracked in list(self.tracked.values()):
            if self._no_data_for_too_long(tracked, now):
                await self._release_unknown(tracked, now)
                released.append(tracked.channel)
                continue
            if tracked.pinned or self.hub.subscribers(tracked.channel) > 0:
                tracked.last_demand = max(tracked.last_demand, now)
                continue
            if now - tracked.last_demand >= idle_s:
                await self.release(tracked.channel)
                released.append(tracked.channel)
        return released

    def _no_data_for_too_long(self, tracked: Tracked, now: float) -> bool:
        up_since = tracked.link.up_since
        if up_since is None or not self._waiting(tracked):
            return False
        waited = now - max(up_since, tracked.subscribed_at)
        return waited >= self.settings.gateway_no_data_release_s

    async def _release_unknown(self, tracked: Tracked, now: float) -> None:
        channel = tracked.channel
        settings = self.settings
        reason = f"no data from the exchange for {channel.name}; is the symbol right?"
        log.warning(
            "releasing %s upstream: no data within %g s of subscribing",
            channel.name,
            settings.gateway_no_data_release_s,
        )
        self.no_data_releases += 1
        ts = time.time_ns() // 1_000_000
        status: dict[str, Json] = {
            "channel": channel.name,
            "status": "failed",
            "reason": reason,
            "ts": ts,
        }
        self.hub.emit_status(channel, status, ts)
        if settings.gateway_unknown_ttl_s > 0:
            self.unknown[channel.name] = now + settings.gateway_unknown_ttl_s
            while len(self.unknown) > _UNKNOWN_CAP:
                self.unknown.popitem(last=False)
        await self.release(channel, quiet=True)

    async def release(self, channel: Channel, *, quiet: bool = False) -> None:
        tracked = self.tracked.pop(channel.name, None)
        if tracked is None:
            return
        self.by_topic.pop(tracked.topic, None)
        if not quiet:
            log.info("releasing %s upstream: no client for the idle time", channel.name)
        if self.links.get(channel.name) is tracked.link:
            del self.links[channel.name]
            await tracked.link.stop()
        else:
            await tracked.link.remove_topic(tracked.topic)
        self.hub.forget(channel)

    async def stop(self) -> None:
        for link in list(self.links.values()):
            await link.stop()
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Close every link and forget what was subscribed (a replica that no
        longer leads); the channels' state stays: it is the cluster's."""
        links = list(self.links.values())
        self.links.clear()
        self.tracked.clear()
        self.by_topic.clear()
        for task in list(self._tasks):
            task.cancel()
        for link in links:
            await link.stop()

    def link_of(self, channel: Channel) -> Link | None:
        tracked = self.tracked.get(channel.name)
        return tracked.link if tracked is not None else None
