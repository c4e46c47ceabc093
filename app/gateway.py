"""The running gateway: settings, hub and registry put together, and the
monitor that turns time passing into channel statuses and idle releases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from app.admission import Streams
from app.channels import Channel, Kind, parse_channel
from app.cluster import (
    UNREACHABLE,
    ClusterDemand,
    ClusterHub,
    Replica,
    default_node_id,
    follow_wanted,
)
from app.config import Settings
from app.errors import ClusterUnavailable, ConfigError
from app.fanout import ReplayBuffer
from app.hub import Hub, LocalHub
from app.pipeline import Pipeline
from app.ports import Alone, Demand, Feed, Leadership, Reading, StateView
from app.recording import Recorder, ReplaySource
from app.registry import Registry
from app.status import Facts, Judged, LinkView, Status, changed, channel_status, readiness
from app.store import ChannelState, Store
from app.upstream import LinkState

log = logging.getLogger("coinsuper_gateway")

MONITOR_INTERVAL_S = 0.5


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Gateway:
    """One gateway process: what the HTTP side and the command line work with."""

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
        self.replica: Replica | None = None
        redis_url = settings.gateway_redis_url.get_secret_value()
        # Typed as the seam: nothing outside app/hub.py and app/cluster.py
        # reaches into its parts.
        self.hub: Hub
        if redis_url and replay is not None:
            raise ConfigError("GATEWAY_REDIS_URL: a replay runs as one process; unset it to replay")
        if redis_url:
            hub = ClusterHub(
                self._make_store,
                self._make_replay,
                self.streams,
                send_timeout_s=settings.gateway_send_timeout_s,
                checkpoint_s=settings.gateway_checkpoint_s,
            )
            self.hub = hub
            self.replica = Replica(
                hub,
                redis_url,
                cluster=settings.gateway_cluster,
                node=self.node,
                ttl_ms=settings.gateway_leader_ttl_ms,
                log_entries=settings.gateway_replay_events,
                log_age_ms=int(settings.gateway_replay_age_s * 1000),
                idle_ms=int(settings.gateway_idle_release_s * 1000),
                on_lead=self._lead,
                on_follow=self._follow,
                on_wanted=lambda names: follow_wanted(self.registry.demand, names),
            )
        else:
            self.hub = LocalHub(
                self._make_store(epoch or secrets.token_hex(4)),
                self._make_replay(),
                self.streams,
                send_timeout_s=settings.gateway_send_timeout_s,
            )
        self.registry = Registry(settings, self.hub, replay=replay)
        # The ports the HTTP side works with (app/ports.py).
        self.feed: Feed = self.hub
        self.demand: Demand = self.registry
        self.view: StateView = _View(self)
        self.leadership: Leadership = Alone()
        if self.replica is not None:
            self.demand = ClusterDemand(
                self.replica, self.registry.demand, settings.gateway_max_upstream
            )
            self.leadership = self.replica
        # One way: sources → pipeline → state, event log, fan-out.
        self.pipeline = Pipeline(
            self.registry.route,
            self.hub,
            max_skew_ms=int(settings.gateway_max_clock_skew_s * 1000),
            recorder=recorder,
        )
        self.registry.on_message = self.pipeline.feed
        self.statuses: dict[str, Status] = {}
        self._tasks: list[asyncio.Task[None]] = []

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

    def _make_replay(self) -> ReplayBuffer:
        settings = self.settings
        return ReplayBuffer(
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
        if self.replica is not None:
            await self.replica.start()  # the upstream links open when it leads
        elif self.replay is not None:
            self._lead()
            self.replay.start(self.pipeline.feed)
        else:
            self._lead()
        self._tasks = [
            asyncio.create_task(self._tick_streams(), name="stream tick"),
            asyncio.create_task(self._monitor(), name="monitor"),
        ]

    def _lead(self) -> None:
        """Open the upstream links: the configured channels and the private feed."""
        for channel in self.settings.subscribe_channels:
            if not channel.is_private:
                self.registry.demand(channel, pinned=True)
        if self.replay is None and self.settings.private_configured:
            self.registry.open_private()
        if self.replica is not None:
            follow_wanted(self.registry.demand, self.replica.wanted)

    async def _follow(self) -> None:
        """This replica no longer leads: its upstream links close."""
        await self.registry.close()
        self.statuses.clear()

    @property
    def follows(self) -> bool:
        """A replica of a cluster that does not lead: it answers from the log."""
        return self.replica is not None and not self.replica.leads

    async def cluster_report(self) -> dict[str, object]:
        """What /v1/cluster answers: this process, its role, the cluster's nodes."""
        if self.replica is not None:
            try:
                async with asyncio.timeout(2.0):
                    return await self.replica.report()
            except (TimeoutError, RedisError, OSError):
                raise ClusterUnavailable(
                    f"{UNREACHABLE}: this replica ({self.node}) cannot tell the cluster's state"
                ) from None
        return {
            "node": self.node,
            "role": "leader",
            "leader": self.node,
            "term": 1,
            "epoch": self.hub.epoch,
            "nodes": [{"node": self.node, "role": "leader", "last_seen_ms": now_ms()}],
        }

    async def stop(self) -> None:
        self.hub.close_all_streams()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.replica is not None:
            await self.replica.stop()
        await self.registry.stop()
        if self.replay is not None:
            await self.replay.stop()
        if self.recorder is not None:
            self.recorder.close()

    # --- statuses ----------------------------------------------------------

    def status(self, channel: Channel, now: int) -> tuple[str, str | None]:
        """A channel's status (API.md: connecting, live, stale, failed) and
        why: :func:`app.status.channel_status` of what is known now (on a
        follower, the leader's word in the log and the data's age)."""
        if self.replica is not None and not self.replica.leads:
            status, reason = self.replica.status(channel, now)
        else:
            status, reason = channel_status(self.facts(channel, now))
        return status.value, reason

    def facts(self, channel: Channel, now: int) -> Facts:
        link = self.registry.link_of(channel)
        state = self.hub.state(channel)
        has_data = state is not None and state.has_data
        return Facts(
            private=channel.is_private,
            link=LinkView(link.state.value) if link is not None else None,
            link_reason=link.reason if link is not None else None,
            link_connects=link.connects if link is not None else 0,
            has_data=has_data,
            stale=has_data and state is not None and self.hub.stale(state, now),
        )

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
                await self.registry.release_idle()
            except Exception:  # the monitor must outlive any one fault
                log.exception("monitor pass failed")

    def _check_statuses(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()
        now = self.now()
        seen = set()
        for tracked in list(self.registry.tracked.values()):
            channel = tracked.channel
            seen.add(channel.name)
            status, reason = channel_status(self.facts(channel, now))
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

    @property
    def private_enabled(self) -> bool:
        """The private routes answer: the private feed is configured, or a
        replayed recording holds private topics."""
        return self.settings.private_configured or "private" in self.registry.links

    def is_stale(self, channel: Channel, state: ChannelState, now: int) -> bool:
        if channel.is_private:
            return self.status(channel, now)[0] != "live"
        return self.hub.stale(state, now)

    def readable_state(self, channel: Channel) -> ChannelState | None:
        """The state to answer from, or None while there is nothing to say.
        Orders and fills are known to be empty once the private link is up."""
        state = self.hub.state(channel)
        if state is not None and state.has_data:
            return state
        if channel.kind in (Kind.ORDERS, Kind.FILLS):
            if self.follows:
                if self.status(channel, self.now())[0] == Status.LIVE.value:
                    return ChannelState(channel)  # known empty: nothing is kept for it
                return None
            link = self.registry.link_of(channel)
            if link is not None and link.state is LinkState.UP:
                return self.hub.open_channel(channel)
        return None

    # --- reports -----------------------------------------------------------

    def report(self, now: int) -> dict[str, object]:
        """What /v1/channels answers: channels, links, counts."""
        return {
            "channels": self.channel_report(now),
            "links": [link.describe() for link in self.registry.links.values()],
            "unknown_topic_messages": self.pipeline.unknown_messages,
            "open_streams": self.streams.open,
        }

    def channel_report(self, now: int) -> list[dict[str, object]]:
        """Every subscribed channel with its status and counts, for /v1/channels
        (on a follower: the channels of the log, carried by the leader's links)."""
        if self.follows:
            pinned = {channel.name for channel in self.settings.subscribe_channels}
            report = []
            for channel in self.followed():
                status = self.status(channel, now)[0]
                link_state = {"live": "up", "failed": "failed"}.get(status, "connecting")
                report.append(
                    self._row(channel, now, channel.name in pinned, "leader", link_state, 0)
                )
            return report
        return [
            self._row(
                tracked.channel,
                now,
                tracked.pinned,
                tracked.link.name,
                tracked.link.state.value,
                tracked.link.connects,
            )
            for tracked in self.registry.tracked.values()
        ]

    def _row(
        self, channel: Channel, now: int, pinned: bool, link: str, link_state: str, connects: int
    ) -> dict[str, object]:
        status, reason = self.status(channel, now)
        state = self.hub.state(channel)
        return {
            "channel": channel.name,
            "symbol": channel.display_symbol,
            "status": status,
            "reason": reason,
            "seq": state.seq if state else 0,
            "last_update_ts": state.received_ts if state else None,
            "exchange_ts": state.exchange_ts if state else None,
            "messages": state.messages if state else 0,
            "rejected": state.rejected if state else 0,
            "superseded": state.superseded if state else 0,
            "gaps": state.gaps if state else 0,
            "last_rejection": state.last_rejection if state else None,
            "subscribers": self.hub.subscribers(channel),
            "pinned": pinned,
            "link": link,
            "link_state": link_state,
            "link_connects": connects,
        }

    def followed(self) -> list[Channel]:
        """The channels this process reports on: those subscribed upstream, or
        on a follower, those the cluster's log holds state or a status of."""
        if not self.follows:
            return [tracked.channel for tracked in self.registry.tracked.values()]
        assert self.replica is not None
        store = self.replica.hub.store
        channels = []
        for name in dict.fromkeys([*store.channels, *store.statuses]):
            state = store.channels.get(name)
            channels.append(state.channel if state is not None else parse_channel(name))
        return channels

    def readiness(self, now: int) -> tuple[bool, list[str]]:
        """Ready when every configured channel is live and no channel is stale
        or failed (:func:`app.status.readiness`); a replica also needs its
        Redis and its copy of the log."""
        replica = self.replica
        if replica is not None and not (replica.reachable and replica.hub.synced):
            return False, [f"cluster: {UNREACHABLE}"]
        judged = []
        if self.follows:
            pinned = {channel.name for channel in self.settings.subscribe_channels}
            for entry in self.channel_report(now):
                name = str(entry["channel"])
                judged.append(
                    Judged(
                        name,
                        name in pinned,
                        Status(str(entry["status"])),
                        entry["reason"] if isinstance(entry["reason"], str) else None,
                    )
                )
            missing = pinned - {j.name for j in judged}
            judged.extend(Judged(n, True, Status.CONNECTING, None) for n in sorted(missing))
            return readiness(judged)
        for tracked in self.registry.tracked.values():
            status, reason = channel_status(self.facts(tracked.channel, now))
            judged.append(Judged(tracked.channel.name, tracked.pinned, status, reason))
        return readiness(judged)


class _View:
    """The gateway's state view (app/ports.py): what REST reads."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def read(self, channel: Channel) -> Reading | None:
        gateway = self.gateway
        state = gateway.readable_state(channel)
        if state is None:
            return None
        return gateway.hub.reading(state, gateway.is_stale(channel, state, gateway.now()))

    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool:
        return await self.gateway.hub.wait_for_data(channel, timeout_s)

    def status(self, channel: Channel) -> tuple[str, str | None]:
        return self.gateway.status(channel, self.gateway.now())
