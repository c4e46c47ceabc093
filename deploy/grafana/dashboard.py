"""Writes coinsuper-gateway.json, the Grafana dashboard of the gateway's
/metrics (`make dashboard`). The panels are listed here once, as data, so
that the JSON stays regular; tests/test_dashboard.py checks that the
committed file is what this writes, that every query parses as PromQL, and
that every metric it names is one a running gateway exports.

    python deploy/grafana/dashboard.py > deploy/grafana/coinsuper-gateway.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
N = 'node=~"$node"'  # every sample names its replica (GATEWAY_NODE_ID)
R = "$__rate_interval"

# (row title, [(panel title, unit, kind, [(query, legend), ...], description)])
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], str]]]] = [
    ("Streams and clients", [
        ("Open streams", "short", "timeseries",
         [(f"sum by (node) (coinsuper_open_streams{{{N}}})", "{{node}}")],
         "SSE responses and WebSocket connections open now"),
        ("HTTP connections", "short", "timeseries",
         [(f"sum by (node) (coinsuper_open_connections{{{N}}})", "{{node}} open"),
          (f"max by (node) (coinsuper_connection_cap{{{N}}})", "{{node}} cap")],
         "Open HTTP connections and their cap (GATEWAY_MAX_CONNECTIONS)"),
        ("Subscribers per channel", "short", "timeseries",
         [(f"sum by (kind, symbol, param) (coinsuper_channel_subscribers{{{N}}})",
           "{{kind}} {{symbol}} {{param}}")],
         "Streams following each channel"),
    ]),
    ("Deliveries", [
        ("Events sent", "ops", "timeseries",
         [(f"sum by (node) (rate(coinsuper_events_sent_total{{{N}}}[{R}]))", "{{node}}")],
         "Events written to stream clients per second"),
        ("Fan-out lag", "s", "timeseries",
         [(f"histogram_quantile(0.5, sum by (le) (rate(coinsuper_fanout_lag_seconds_bucket{{{N}}}[{R}])))",
           "p50"),
          (f"histogram_quantile(0.99, sum by (le) (rate(coinsuper_fanout_lag_seconds_bucket{{{N}}}[{R}])))",
           "p99")],
         "From an upstream message's receipt (the leader's, in a cluster) to its event written to "
         "every ready client"),
        ("Slow-client closes", "short", "timeseries",
         [(f"sum(increase(coinsuper_stream_overflow_closes_total{{{N}}}[{R}]))", "overflow"),
          (f"sum(increase(coinsuper_stream_stalled_closes_total{{{N}}}[{R}]))", "stalled")],
         "Streams closed because their buffer overflowed (they resume) or their client stopped "
         "reading (GATEWAY_SEND_TIMEOUT_S)"),
    ]),
    ("Channels", [
        ("Channels live", "short", "stat",
         [(f"sum(coinsuper_channel_live{{{N}}})", "live"),
          (f"count(coinsuper_channel_live{{{N}}})", "channels")],
         "Channels live, of those subscribed"),
        ("Channels not live", "short", "timeseries",
         [(f"coinsuper_channel_live{{{N}}} == 0", "{{node}} {{kind}} {{symbol}} {{param}}")],
         "Each channel that is connecting, stale or failed (/v1/channels says why)"),
        ("Staleness", "s", "timeseries",
         [(f"max by (kind, symbol, param) (coinsuper_message_age_seconds{{{N}}})",
           "{{kind}} {{symbol}} {{param}}")],
         "Seconds since each channel's last upstream message"),
        ("Upstream messages", "ops", "timeseries",
         [(f"sum by (kind) (rate(coinsuper_upstream_messages_total{{{N}}}[{R}]))", "{{kind}}")],
         "Upstream messages accepted per second, by channel kind"),
    ]),
    ("Upstream links", [
        ("Links up", "short", "timeseries",
         [(f"sum by (link) (coinsuper_link_up{{{N}}})", "{{link}}")],
         "1 when the link is connected and subscribed (only the leader holds links)"),
        ("Reconnects", "short", "timeseries",
         [(f"sum by (link) (increase(coinsuper_link_reconnects_total{{{N}}}[{R}]))", "{{link}}")],
         "Upstream reconnections"),
        ("Logins refused", "short", "timeseries",
         [(f"sum by (link) (coinsuper_link_failed{{{N}}})", "{{link}}")],
         "1 when the broker refused the link's login"),
    ]),
    ("Rejections and gaps", [
        ("Upstream messages rejected", "ops", "timeseries",
         [(f"sum by (kind, symbol) (rate(coinsuper_upstream_rejected_total{{{N}}}[{R}]))",
           "{{kind}} {{symbol}}"),
          (f"sum(rate(coinsuper_upstream_unknown_topic_messages_total{{{N}}}[{R}]))", "unknown topic")],
         "Malformed or implausible payloads (the last good state is kept), and messages on no "
         "followed topic"),
        ("Trade gaps", "short", "timeseries",
         [(f"sum by (symbol) (increase(coinsuper_trade_gaps_total{{{N}}}[{R}]))", "{{symbol}}")],
         "Trade pushes that shared nothing with the previous window: trades may be missing"),
        ("Connections refused", "ops", "timeseries",
         [(f"sum by (reason) (rate(coinsuper_connections_refused_total{{{N}}}[{R}]))", "{{reason}}")],
         "Connections refused or closed by a limit of the connection layer"),
        ("Channels released for no data", "short", "timeseries",
         [(f"sum(increase(coinsuper_no_data_releases_total{{{N}}}[{R}]))", "released")],
         "Channels the exchange sent nothing for (a made-up symbol?)"),
    ]),
    ("REST", [
        ("Requests by route", "reqps", "timeseries",
         [(f"sum by (route) (rate(coinsuper_http_request_duration_seconds_count{{{N}}}[{R}]))",
           "{{route}}")],
         "HTTP requests per second, by route template"),
        ("Answers by status", "reqps", "timeseries",
         [(f"sum by (status) (rate(coinsuper_http_request_duration_seconds_count{{{N}}}[{R}]))",
           "{{status}}")],
         "HTTP answers per second, by status"),
        ("Latency p99 by route", "s", "timeseries",
         [("histogram_quantile(0.99, sum by (le, route) "
           f"(rate(coinsuper_http_request_duration_seconds_bucket{{{N}}}[{R}])))", "{{route}}")],
         "Time to the response's start (streams: to the stream's start)"),
    ]),
    ("Runtime", [
        ("Garbage-collection pauses", "percentunit", "timeseries",
         [(f"sum by (node, generation) (rate(coinsuper_gc_pause_seconds_total{{{N}}}[{R}]))",
           "{{node}} gen {{generation}}")],
         "Share of time spent in garbage collection, by generation"),
        ("Longest pause", "s", "timeseries",
         [(f"max by (node, generation) (coinsuper_gc_longest_pause_seconds{{{N}}})",
           "{{node}} gen {{generation}}")],
         "The longest collection since the process started: a full one stalls every stream"),
        ("Collections", "ops", "timeseries",
         [(f"sum by (generation) (rate(coinsuper_gc_collections_total{{{N}}}[{R}]))",
           "gen {{generation}}")],
         "Garbage collections per second"),
    ]),
    ("Cluster", [
        ("Role", "short", "timeseries",
         [(f"max by (node) (coinsuper_cluster_leader{{{N}}})", "{{node}}")],
         "1 for the replica that holds the upstream links (a single process: always 1)"),
        ("Term", "short", "stat",
         [(f"max(coinsuper_cluster_term{{{N}}})", "term")],
         "The fencing term: grows whenever another replica leads"),
        ("Redis", "short", "timeseries",
         [(f"min by (node) (coinsuper_cluster_redis_up{{{N}}})", "{{node}}")],
         "1 when the cluster's Redis answers and the replica's log is read"),
        ("Refused writes and dropped changes", "short", "timeseries",
         [(f"sum by (node) (increase(coinsuper_cluster_refused_writes_total{{{N}}}[{R}]))",
           "{{node}} refused"),
          (f"sum by (node) (increase(coinsuper_cluster_dropped_changes_total{{{N}}}[{R}]))",
           "{{node}} dropped")],
         "Appends fenced or failed (the leader stepped down), and messages taken after it did"),
    ]),
]


def panel(pid: int, title: str, unit: str, kind: str, queries: list[tuple[str, str]],
          description: str, x: int, y: int, width: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(queries)
        ],
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for row_title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        width = 24 // len(row)
        for i, (title, unit, kind, queries, description) in enumerate(row):
            panels.append(panel(pid, title, unit, kind, queries, description, i * width, y, width))
            pid += 1
        y += 8
    return {
        "title": "coinsuper-gateway",
        "uid": "coinsuper-gateway",
        "description": "Streams, deliveries, channels, upstream links, rejections, REST, the "
                       "runtime and the cluster of coinsuper-gateway (its /metrics)",
        "tags": ["coinsuper-gateway"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "node", "label": "node", "type": "query", "datasource": DS,
             "query": {"query": "label_values(coinsuper_cluster_leader, node)", "refId": "node"},
             "definition": "label_values(coinsuper_cluster_leader, node)",
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
             "current": {"text": "All", "value": "$__all"}, "sort": 1, "hide": 0},
        ]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def text() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
