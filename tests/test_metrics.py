"""/metrics during the demo, parsed by Prometheus' own text parser; JSON logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import gateway, wait_for

PUBLIC = {("orderbook", "BTC_USD", "0.01"), ("trades", "BTC_USD", ""), ("depth", "BTC_USD", ""),
          ("kline", "BTC_USD", "1m")}


@pytest.mark.processes
def test_metrics_parse_and_count_every_public_channel(tmp_path: Path) -> None:
    env = {"GATEWAY_LOG_FORMAT": "json"}
    with gateway(tmp_path, env, command="demo") as gw:
        wait_for(lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01").status_code == 200, 10, "a book")
        gw.http.get("/v1/orderbook/ZZ_USD?step=0.01&wait=0")  # an unconfigured symbol: label "other"
        gw.http.get("/v1/orderbook/BTC_USD?step=0.5")  # a 400
        wait_for(lambda: _messages(gw.http.get("/metrics").text).keys() >= PUBLIC
                 and all(v > 0 for k, v in _messages(gw.http.get("/metrics").text).items() if k in PUBLIC),
                 15, "non-zero counts for every public channel")
        response = gw.http.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        for name in ("coinsuper_upstream_messages", "coinsuper_upstream_rejected", "coinsuper_link_up",
                     "coinsuper_link_reconnects", "coinsuper_message_age_seconds", "coinsuper_open_streams",
                     "coinsuper_events_sent", "coinsuper_stream_overflow_closes",
                     "coinsuper_http_request_duration_seconds", "coinsuper_gc_collections",
                     "coinsuper_gc_pause_seconds", "coinsuper_gc_longest_pause_seconds"):
            assert name in families, name
        collections = {s.labels["generation"]: s.value for s in families["coinsuper_gc_collections"].samples
                       if s.name.endswith("_total")}
        assert collections["0"] > 0  # a running gateway collects its youngest generation often
        symbols = {s.labels.get("symbol") for s in families["coinsuper_upstream_messages"].samples}
        assert "ZZ_USD" not in symbols and "other" in symbols  # labels stay bounded
        routes = {(s.labels["route"], s.labels["status"])
                  for s in families["coinsuper_http_request_duration_seconds"].samples if "route" in s.labels}
        assert ("/v1/orderbook/{symbol:path}", "200") in routes and ("/v1/orderbook/{symbol:path}", "400") in routes
        # Every sample names its replica; a single process is its own leader.
        nodes = {s.labels.get("node") for f in families.values() if f.name.startswith("coinsuper")
                 for s in f.samples}
        assert len(nodes) == 1 and None not in nodes
        assert [s.value for s in families["coinsuper_cluster_leader"].samples] == [1]
        links = {s.labels["link"]: s.value for s in families["coinsuper_link_up"].samples}
        assert links["private"] == 1 and links["orderbook:BTC_USD:0.01"] == 1
    lines = [line for line in gw.log_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"].startswith("link orderbook:BTC_USD:0.01 up") for r in records)


def _messages(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "coinsuper_upstream_messages":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["kind"], sample.labels["symbol"], sample.labels["param"])] = sample.value
    return out
