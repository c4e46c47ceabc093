"""The running gateway: settings, hub, upstream and role put together, the
ports the HTTP side gets (:class:`app.ports.Ports`), and the monitor that
turns time passing into channel statuses and idle releases.

This is the wiring: the one place that knows whether the process is the whole
gateway or a replica of a cluster. It builds the parts for that (an in-process
event log, or the cluster's log in Redis with a :class:`app.cluster.replica.Replica`),
and swaps the role (:mod:`app.roles`) when the process starts or stops leading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from app.cluster.connect import RedisTarget, SentinelRedis, SingleRedis
from app.cluster.replica import ClusterDemand, RedisLog, Replica, default_node_id, follow_wanted
from app.config import Settings
from app.domain.channels import Channel, Kind
from app.domain.errors import ConfigError
from app.domain.status import Status, changed
from app.ingest.pipeline import Pipeline
from app.ingest.recording import Recorder, ReplaySource
from app.ingest.upstream import Upstream
from app.ports import ChannelRow, ClusterCounts, Demand, Membership, Ports, Reading
from app.roles import Leading, Role
from app.state.store import Store
from app.streams.admission import Streams
from app.streams.eventlog import EventLog, LocalLog, RecentEvents
from app.streams.hub import Hub

log = logging.getLogger("coinsuper_gateway")

MONITOR_INTERVAL_S = 0.5


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _nothing() -> None:
    return None


class Alone:
    """The membership of a process that is the whole gateway: it always leads."""

    def __init__(self, node: str, hub: Hub) -> None:
        self.node = node
        self.hub = hub

    @property
    def leads(self) -> bool:
        return True

    def problems(self) -> list[str]:
        return []

    async def report(self) -> dict[str, object]:
        return {
            "node": self.node,
            "role": "leader",
            "leader": self.node,
            "term": 1,
            "epoch": self.hub.epoch,
            "nodes": [{"node": self.node, "role": "leader", "last_seen_ms": now_ms()}],
        }

    def counts(self) -> ClusterCounts | None:
        return None


def redis_target(settings: Settings) -> RedisTarget:
    """The cluster's Redis: its URL, or the master its Sentinels name."""
    if settings.sentinels:
        password = settings.gateway_redis_sentinel_password.get_secret_value()
        timeout = max(settings.gateway_leader_ttl_ms / 1000, 1.0)
        return SentinelRedis(
            settings.sentinels, settings.gateway_redis_master, password or None, timeout
        )
    return SingleRedis(settings.gateway_redis_url.get_secret_value())


class Gateway:
    """One gateway process: its parts, wired; :attr:`ports` is what the HTTP
    side and the metrics work with."""

    def __init__(
        self,
        settings: Settings,
        *,
        epoch: str | None = None,
        replay: ReplaySource | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.settings = settings
        self.replay = replay
        self.recorder = recorder
        # The clock of staleness and answers: the wall clock, or a replay's.
        self.now: Callable[[], int] = replay.now_ms if replay is not None else now_ms
        self.streams = Streams(
            settings.gateway_max_streams, settings.gateway_max_streams_per_client
        )
        self.node = settings.gateway_node_id or default_node_id()
        if settings.clustered and replay is not None:
            raise ConfigError(
                "GATEWAY_REDIS_URL / GATEWAY_REDIS_SENTINELS: a replay runs as one process; "
                "unset them to replay"
            )
        event_log: EventLog
        if settings.clustered:
            event_log = RedisLog(
                self._make_store, self._make_replay, checkpoint_s=settings.gateway_checkpoint_s
            )
        else:
            event_log = LocalLog(
                self._make_store(epoch or secrets.token_hex(4)), self._make_replay()
            )
        self.hub = Hub(event_log, self.streams, send_timeout_s=settings.gateway_send_timeout_s)
        self.upstream = Upstream(settings, self.hub, replay=replay)
        self.leading = Leading(self.upstream, self.hub)
        # The role while this process does not lead (a replica's).
        self.following: Role = self.leading
        self.membership: Membership
        self.demand: Demand
        # How this process starts and stops being a member (a replica leads
        # when it is elected; the process alone leads at once).
        self._starting: Callable[[], Awaitable[None]]
        self._stopping: Callable[[], Awaitable[None]]
        if isinstance(event_log, RedisLog):
            replica = Replica(
                event_log,
                self.hub,
                redis_target(settings),
                cluster=settings.gateway_cluster,
                node=self.node,
                ttl_ms=settings.gateway_leader_ttl_ms,
                log_entries=settings.gateway_replay_events,
                log_age_ms=int(settings.gateway_replay_age_s * 1000),
                idle_ms=int(settings.gateway_idle_release_s * 1000),
                on_lead=lambda: self._lead(replica.wanted),
                on_follow=self._follow,
                on_wanted=lambda names: follow_wanted(self.upstream.demand, names),
                pinned=frozenset(channel.name for channel in settings.subscribe_channels),
                min_replicas=settings.redis_min_replicas,
                wait_ms=settings.gateway_redis_wait_ms,
            )
            self.following = replica.following
            self.membership = replica
            self.demand = ClusterDemand(
                replica, self.upstream.demand, settings.gateway_max_upstream
            )
            self._starting, self._stopping = replica.start, replica.stop
        else:
            self.membership = Alone(self.node, self.hub)
            self.demand = self.upstream
            self._starting, self._stopping = self._start_alone, _nothing
        # One way: sources → pipeline → state, event log, fan-out.
        self.pipeline = Pipeline(
            self.upstream.route,
            self.hub,
            max_skew_ms=int(settings.gateway_max_clock_skew_s * 1000),
            recorder=recorder,
        )
        self.upstream.on_message = self.pipeline.feed
        self.statuses: dict[str, Status] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.ports = Ports(
            settings, self.hub, _View(self), self.demand, self.streams, _Report(self)
        )

    def _make_store(self, epoch: str) -> Store:
        settings = self.settings
        return Store(
            epoch,
            trade_capacity=settings.gateway_trade_log,
            candle_capacity=settings.gateway_candle_history,
            closed_order_capacity=settings.gateway_closed_orders,
            fill_capacity=settings.gateway_fill_log,
            stale_factor=settings.gateway_stale_factor,
        )

    def _make_replay(self) -> RecentEvents:
        settings = self.settings
        return RecentEvents(
            settings.gateway_replay_events, int(settings.gateway_replay_age_s * 1000)
        )

    async def start(self) -> None:
        if self.settings.coinsuper_secret_key.get_secret_value() and not (
            self.settings.private_configured
        ):
            log.warning(
                "COINSUPER_SECRET_KEY is set but the access key or e-mail is not: "
                "the private feed stays off"
            )
        await self._starting()
        self._tasks = [
            asyncio.create_task(self._tick_streams(), name="stream tick"),
            asyncio.create_task(self._monitor(), name="monitor"),
        ]

    async def _start_alone(self) -> None:
        self._lead([])
        if self.replay is not None:
            self.replay.start(self.pipeline.feed)

    def _lead(self, wanted: list[str]) -> None:
        """This process leads: open the upstream links (the configured
        channels, the private feed, and what other replicas' clients want)."""
        for channel in self.settings.subscribe_channels:
            if not channel.is_private:
                self.upstream.demand(channel, pinned=True)
        if self.replay is None and self.settings.private_configured:
            self.upstream.open_private()
        follow_wanted(self.upstream.demand, wanted)

    @property
    def role(self) -> Role:
        """What this process answers as: leading while its membership leads
        (at once when the lease is lost, before the links have closed)."""
        return self.leading if self.membership.leads else self.following

    async def _follow(self) -> None:
        """This replica no longer leads: it answers from the log, and its
        upstream links close."""
        await self.upstream.close()
        self.statuses.clear()

    async def stop(self) -> None:
        self.hub.close_all_streams()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stopping()
        await self.upstream.stop()
        if self.replay is not None:
            await self.replay.stop()
        if self.recorder is not None:
            self.recorder.close()

    # --- statuses ----------------------------------------------------------

    def status(self, channel: Channel, now: int) -> tuple[str, str | None]:
        """A channel's status (connecting, live, stale, failed) and why, as
        this process's role judges it."""
        status, reason = self.role.status(channel, now)
        return status.value, reason

    async def _tick_streams(self) -> None:
        """Heartbeats and send deadlines: a pass that never awaits anything but
        its sleep, so that no broker round trip can delay a stream's heartbeat."""
        settings = self.settings
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            try:
                self.hub.tick_streams(time.monotonic(), settings.gateway_heartbeat_s)
            except Exception:  # the tick must outlive any one fault
                log.exception("stream tick failed")

    async def _monitor(self) -> None:
        """Statuses and releases: a release awaits the broker (an unsubscribe,
        a disconnect), so it runs apart from the stream tick."""
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            try:
                self._check_statuses()
                await self.upstream.release_idle()
            except Exception:  # the monitor must outlive any one fault
                log.exception("monitor pass failed")

    def _check_statuses(self) -> None:
        """The links' channels whose status changed get a status event (on a
        follower there are none: the leader's are in the log)."""
        if self.recorder is not None:
            self.recorder.flush()
        now = self.now()
        seen = set()
        for tracked in list(self.upstream.tracked.values()):
            channel = tracked.channel
            seen.add(channel.name)
            status, reason = self.leading.status(channel, now)
            previous = self.statuses.get(channel.name)
            self.statuses[channel.name] = status
            if changed(previous, status):
                log.info("channel %s %s%s", channel.name, status, f": {reason}" if reason else "")
                self.hub.emit_status(
                    channel,
                    {"channel": channel.name, "status": status.value, "reason": reason, "ts": now},
                    now,
                )
        for name in set(self.statuses) - seen:
            del self.statuses[name]

    # --- reports -----------------------------------------------------------

    def rows(self, now: int) -> list[ChannelRow]:
        """Every channel this process reports on, with its status and counts."""
        role = self.role
        own = role.holds_links()
        rows = []
        for listed in role.listed(now):
            channel = listed.channel
            state = self.hub.state(channel)
            rows.append(
                ChannelRow(
                    channel=channel,
                    status=listed.status.value,
                    reason=listed.reason,
                    seq=state.seq if state else 0,
                    last_update_ts=state.received_ts if state else None,
                    exchange_ts=state.exchange_ts if state else None,
                    messages=state.messages if state else 0,
                    rejected=state.rejected if state else 0,
                    superseded=state.superseded if state else 0,
                    gaps=state.gaps if state else 0,
                    last_rejection=state.last_rejection if state else None,
                    subscribers=self.hub.subscribers(channel),
                    pinned=listed.pinned,
                    link=listed.link,
                    link_state=listed.link_state,
                    link_connects=listed.link_connects,
                    own_link=own,
                )
            )
        return rows

    def readiness(self, now: int) -> tuple[bool, list[str]]:
        """Ready when every configured channel is live and no channel is stale
        or failed (:func:`app.domain.status.readiness`); a replica also needs its
        Redis and its copy of the log."""
        problems = self.membership.problems()
        if problems:
            return False, problems
        return self.role.readiness(now)

    def readable(self, channel: Channel) -> Reading | None:
        """A channel's answer, or None while there is nothing to say. Orders
        and fills are known to be empty once the private link is up."""
        now = self.now()
        state = self.hub.state(channel)
        if state is None or not state.has_data:
            if channel.kind not in (Kind.ORDERS, Kind.FILLS):
                return None
            state = self.role.known_empty(channel, now)
            if state is None:
                return None
        if channel.is_private:
            stale = not self.role.private_live(channel, now)
        else:
            stale = self.hub.stale(state, now)
        return self.hub.reading(state, stale)


class _View:
    """The gateway's state view (app/ports.py): what REST reads."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def read(self, channel: Channel) -> Reading | None:
        return self.gateway.readable(channel)

    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool:
        return await self.gateway.hub.wait_for_data(channel, timeout_s)

    def status(self, channel: Channel) -> tuple[str, str | None]:
        return self.gateway.status(channel, self.gateway.now())


class _Report:
    """The gateway's report (app/ports.py): what operators read."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def node(self) -> str:
        return self.gateway.node

    def now(self) -> int:
        return self.gateway.now()

    def rows(self, now: int) -> list[ChannelRow]:
        return self.gateway.rows(now)

    def report(self, now: int) -> dict[str, object]:
        gateway = self.gateway
        return {
            "channels": [row.json() for row in gateway.rows(now)],
            "links": [link.describe() for link in gateway.upstream.links.values()],
            "unknown_topic_messages": gateway.pipeline.unknown_messages,
            "open_streams": gateway.streams.open,
        }

    def readiness(self, now: int) -> tuple[bool, list[str]]:
        return self.gateway.readiness(now)

    async def cluster(self) -> dict[str, object]:
        return await self.gateway.membership.report()

    def private_enabled(self) -> bool:
        """The private feed is configured, or a replayed recording holds private topics."""
        gateway = self.gateway
        return gateway.settings.private_configured or "private" in gateway.upstream.links

    @property
    def leads(self) -> bool:
        return self.gateway.membership.leads

    def cluster_counts(self) -> ClusterCounts | None:
        return self.gateway.membership.counts()

    def unknown_messages(self) -> int:
        return self.gateway.pipeline.unknown_messages

    def no_data_releases(self) -> int:
        return self.gateway.upstream.no_data_releases
