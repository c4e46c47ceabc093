"""Prometheus metrics: what operators watch.

Counts that the gateway keeps anyway (messages and rejects per channel, link
connects, open streams, events sent, overflow closes) are read at scrape time by
:class:`GatewayCollector`, so the ingest path does no metric work of its own.
REST requests are timed by :class:`RequestMetrics`, an ASGI middleware.

Labels stay bounded: channel kinds, steps and ranges come from fixed sets, and
a symbol is named only if it was configured at start (``COINSUPER_SUBSCRIBE``
or ``GATEWAY_METRIC_SYMBOLS``); any other is ``other``. Routes are labelled by
their template, never by the path a client sent.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.channels import Channel
from app.ports import ChannelRow, Ports

if TYPE_CHECKING:
    from app.protocols.http import ConnectionGuard

OTHER = "other"


class LabelPolicy:
    """Turns channels and links into bounded label values."""

    def __init__(self, symbols: set[str]) -> None:
        self.symbols = symbols

    def symbol(self, channel: Channel) -> str:
        if channel.symbol is None:
            return ""
        return channel.symbol if channel.symbol in self.symbols else OTHER

    def labels(self, channel: Channel) -> tuple[str, str, str]:
        """(kind, symbol, parameter): the parameter is a step or range, from a fixed set."""
        return channel.kind.value, self.symbol(channel), channel.param or ""


class GatewayCollector(Collector):
    """Reads the gateway's own counters at scrape time, through its ports."""

    def __init__(
        self,
        ports: Ports,
        policy: LabelPolicy,
        connections: ConnectionGuard | None = None,
        gc_pauses: GcPauses | None = None,
    ) -> None:
        self.report = ports.report
        self.streams = ports.streams
        self.policy = policy
        self.connections = connections
        self.gc_pauses = gc_pauses

    def collect(self) -> Iterator[Metric]:
        node = self.report.node
        for metric in self._all():
            # Every sample names its replica, so that replicas scraped through
            # one address (a load balancer) stay apart.
            metric.samples = [
                sample._replace(labels={**sample.labels, "node": node}) for sample in metric.samples
            ]
            yield metric

    def _all(self) -> Iterator[Metric]:
        yield from self._collect()
        yield from self._cluster()
        if self.gc_pauses is not None:
            yield from self.gc_pauses.metrics()

    def _cluster(self) -> Iterator[Metric]:
        counts = self.report.cluster_counts()
        leader = GaugeMetricFamily(
            "coinsuper_cluster_leader", "1 when this process holds the upstream links"
        )
        leader.add_metric([], 1 if self.report.leads else 0)
        yield leader
        if counts is None:
            return
        up = GaugeMetricFamily(
            "coinsuper_cluster_redis_up", "1 when the cluster's Redis answers and the log is read"
        )
        up.add_metric([], 1 if counts.redis_up else 0)
        refused = CounterMetricFamily(
            "coinsuper_cluster_refused_writes",
            "Appends to the cluster's log refused (fenced) or failed: the leader stepped down",
        )
        refused.add_metric([], counts.refused_writes)
        dropped = CounterMetricFamily(
            "coinsuper_cluster_dropped_changes",
            "Upstream messages taken after this process stopped leading (not logged)",
        )
        dropped.add_metric([], counts.dropped_changes)
        term = GaugeMetricFamily(
            "coinsuper_cluster_term",
            "The cluster's fencing term, as this replica last read it: grows whenever another "
            "process leads",
        )
        term.add_metric([], counts.term)
        unreplicated = CounterMetricFamily(
            "coinsuper_cluster_unreplicated",
            "Writes (batches of the log, lease steps) that fewer Redis replicas than "
            "GATEWAY_REDIS_MIN_REPLICAS confirmed within GATEWAY_REDIS_WAIT_MS (handed out all the same)",
        )
        unreplicated.add_metric([], counts.unreplicated)
        yield from (up, refused, dropped, term, unreplicated)

    def _collect(self) -> Iterator[Metric]:
        report = self.report
        now_ms = report.now()
        rows = report.rows(now_ms)
        names = ["kind", "symbol", "param"]
        messages = CounterMetricFamily(
            "coinsuper_upstream_messages", "Upstream messages accepted, per channel", labels=names
        )
        rejected = CounterMetricFamily(
            "coinsuper_upstream_rejected", "Upstream messages rejected, per channel", labels=names
        )
        age = GaugeMetricFamily(
            "coinsuper_message_age_seconds",
            "Seconds since the channel's last upstream message",
            labels=names,
        )
        live = GaugeMetricFamily(
            "coinsuper_channel_live", "1 when the channel is live, else 0", labels=names
        )
        subscribers = GaugeMetricFamily(
            "coinsuper_channel_subscribers", "Streams following the channel", labels=names
        )
        # Channels that map to the same labels (other symbols) are summed.
        sums: dict[tuple[str, str, str], list[float]] = {}
        for channel_row in rows:
            key = self.policy.labels(channel_row.channel)
            row = sums.setdefault(key, [0, 0, 0, 0, -1.0])
            row[0] += channel_row.messages
            row[1] += channel_row.rejected
            row[2] += channel_row.status == "live"
            row[3] += channel_row.subscribers
            if channel_row.last_update_ts is not None:
                seconds = (now_ms - channel_row.last_update_ts) / 1000
                row[4] = max(row[4], seconds)
        for key, (count, bad, is_live, subs, seconds) in sums.items():
            labels = list(key)
            messages.add_metric(labels, count)
            rejected.add_metric(labels, bad)
            live.add_metric(labels, is_live)
            subscribers.add_metric(labels, subs)
            if seconds >= 0:
                age.add_metric(labels, seconds)
        yield from (messages, rejected, age, live, subscribers)

        link_up = GaugeMetricFamily(
            "coinsuper_link_up",
            "1 when the upstream link is connected and subscribed",
            labels=["link"],
        )
        reconnects = CounterMetricFamily(
            "coinsuper_link_reconnects", "Upstream reconnections, per link", labels=["link"]
        )
        failed = GaugeMetricFamily(
            "coinsuper_link_failed", "1 when the broker refused the link's login", labels=["link"]
        )
        links: dict[str, list[float]] = {}
        for channel_row in rows:
            if not channel_row.own_link:
                continue  # a follower's channels: the leader's links carry them
            name = (
                channel_row.link
                if channel_row.link in ("public", "private")
                else ":".join(p for p in self.policy.labels(channel_row.channel) if p)
            )
            row = links.setdefault(name, [0, 0, 0])
            row[0] = max(row[0], channel_row.link_state == "up")
            row[1] = max(row[1], max(channel_row.link_connects - 1, 0))
            row[2] = max(row[2], channel_row.link_state == "failed")
        for name, (up, again, refused) in links.items():
            link_up.add_metric([name], up)
            reconnects.add_metric([name], again)
            failed.add_metric([name], refused)
        yield from (link_up, reconnects, failed)

        streams = GaugeMetricFamily("coinsuper_open_streams", "Open streams")
        streams.add_metric([], self.streams.open)
        sent = CounterMetricFamily("coinsuper_events_sent", "Events sent to stream clients")
        sent.add_metric([], self.streams.events_sent)
        closed = CounterMetricFamily(
            "coinsuper_stream_overflow_closes", "Streams closed because their buffer overflowed"
        )
        closed.add_metric([], self.streams.overflow_closes)
        unknown = CounterMetricFamily(
            "coinsuper_upstream_unknown_topic_messages", "Upstream messages on no followed topic"
        )
        unknown.add_metric([], report.unknown_messages())
        stalled = CounterMetricFamily(
            "coinsuper_stream_stalled_closes",
            "Streams closed (socket included) because the client stopped reading",
        )
        stalled.add_metric([], self.streams.stalled_closes)
        lag = self.streams.lag
        fanout_lag = HistogramMetricFamily(
            "coinsuper_fanout_lag_seconds",
            "From an upstream message's receipt (the leader's, in a cluster) to its event "
            "written to every ready follower's connection, per event that had any",
        )
        fanout_lag.add_metric([], lag.buckets(), lag.total_s)
        gaps = CounterMetricFamily(
            "coinsuper_trade_gaps",
            "Trade pushes that shared nothing with a full previous one (trades may be missing)",
            labels=names,
        )
        for key, count in self._gaps(rows).items():
            gaps.add_metric(list(key), count)
        released = CounterMetricFamily(
            "coinsuper_no_data_releases",
            "Channels released because the exchange sent no data for them",
        )
        released.add_metric([], report.no_data_releases())
        yield from (streams, sent, closed, unknown, stalled, fanout_lag, gaps, released)
        if self.connections is not None:
            yield from self._connections(self.connections)

    def _gaps(self, rows: list[ChannelRow]) -> dict[tuple[str, str, str], int]:
        sums: dict[tuple[str, str, str], int] = {}
        for row in rows:
            if row.gaps:
                key = self.policy.labels(row.channel)
                sums[key] = sums.get(key, 0) + row.gaps
        return sums

    @staticmethod
    def _connections(guard: ConnectionGuard) -> Iterator[Metric]:
        open_now = GaugeMetricFamily("coinsuper_open_connections", "Open HTTP connections")
        open_now.add_metric([], guard.open)
        cap = GaugeMetricFamily("coinsuper_connection_cap", "Cap on open HTTP connections")
        cap.add_metric([], guard.limits.max_connections)
        refused = CounterMetricFamily(
            "coinsuper_connections_refused",
            "Connections refused or closed by a limit, by reason",
            labels=["reason"],
        )
        for reason in (
            "overall",
            "per_address",
            "evicted",
            "header_timeout",
            "request_line",
            "header_bytes",
        ):
            refused.add_metric([reason], guard.refused[reason])
        yield from (open_now, cap, refused)


class RequestMetrics:
    """Counts and times HTTP requests by route template, method and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram, node: str) -> None:
        self.app = app
        self.node = node
        self.histogram = histogram

    @staticmethod
    def histogram_of(registry: CollectorRegistry) -> Histogram:
        """The requests' histogram, shared with the routes the connection
        layer answers itself (app/http/fast.py)."""
        return Histogram(
            "coinsuper_http_request_duration_seconds",
            "HTTP requests (streams: time to the response's start)",
            ["route", "method", "status", "node"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False

        async def timed_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self._observe(scope, message["status"], start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if not started:
                self._observe(scope, 500, start)
            raise

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS", "POST"):
            method = "other"
        self.histogram.labels(template, method, str(status), self.node).observe(
            time.perf_counter() - start
        )


class GcPauses:
    """The garbage collector's pauses, by generation: with thousands of
    connections a full collection is what can stall every stream at once
    (bench/fanout.py), so it is measured where it happens, at the cost of a
    clock read and three additions per collection (exported at scrape time)."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self.counts[generation] += 1
        self.seconds[generation] += pause
        if pause > self.longest[generation]:
            self.longest[generation] = pause

    def install(self) -> None:
        gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def metrics(self) -> Iterator[Metric]:
        labels = ["generation"]
        count = CounterMetricFamily(
            "coinsuper_gc_collections", "Garbage collections", labels=labels
        )
        total = CounterMetricFamily(
            "coinsuper_gc_pause_seconds", "Time spent in garbage collection", labels=labels
        )
        longest = GaugeMetricFamily(
            "coinsuper_gc_longest_pause_seconds", "The longest collection so far", labels=labels
        )
        for generation in range(3):
            label = [str(generation)]
            count.add_metric(label, self.counts[generation])
            total.add_metric(label, self.seconds[generation])
            longest.add_metric(label, self.longest[generation])
        yield count
        yield total
        yield longest
