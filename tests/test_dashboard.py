"""The Grafana dashboard (deploy/grafana/coinsuper-gateway.json) and the
Prometheus scrape example (deploy/prometheus/prometheus.yml): the file is
what its generator writes, every query parses as PromQL, names only metrics
and labels a running gateway exports, and answers data when Debian's
Prometheus, configured from the example, scrapes a gateway replica (the demo
on a real Redis, so that the cluster's metrics are there too)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.cli import free_port
from tests.support import REPO, RedisServer, gateway, wait_for

DASHBOARD = REPO / "deploy/grafana/coinsuper-gateway.json"
SCRAPE = REPO / "deploy/prometheus/prometheus.yml"
# Queries that may rightly answer nothing from a healthy gateway: channels
# not live (all are), trade gaps (none in the simulator's windows).
MAY_BE_EMPTY = {"Channels not live", "Trade gaps"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


def concrete(expr: str, interval: str = "1m") -> str:
    """A query as Grafana sends it: its variables replaced."""
    return expr.replace("$__rate_interval", interval).replace("$node", ".*")


def selectors(node: Any) -> tuple[set[str], set[str]]:
    """The metric names and the label names an expression uses."""
    names: set[str] = set()
    labels: set[str] = set()
    kind = type(node).__name__
    if kind == "VectorSelector":
        names.add(node.name)
        labels.update(m.name for m in node.matchers.matchers)
    modifier = getattr(node, "modifier", None)
    if kind == "AggregateExpr" and modifier is not None:
        labels.update(modifier.labels)
    children = [getattr(node, attr, None) for attr in ("expr", "lhs", "rhs", "vector_selector", "param")]
    children += list(getattr(node, "args", None) or [])
    for child in children:
        if child is not None and type(child).__module__ == "promql_parser":
            more_names, more_labels = selectors(child)
            names |= more_names
            labels |= more_labels
    return names, labels


def test_the_dashboard_is_what_its_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboard", REPO / "deploy/grafana/dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.text(), "python deploy/grafana/dashboard.py > deploy/grafana/coinsuper-gateway.json"
    board = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "node"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_parses_and_filters_on_the_node() -> None:
    found = queries()
    assert len(found) >= 30
    for title, expr in found:
        names, labels = selectors(promql_parser.parse(concrete(expr)))
        assert names and all(n.startswith("coinsuper_") for n in names), (title, names)
        assert "node" in labels, f"{title}: {expr} ignores the node variable"


def exported(metrics_text: str) -> dict[str, set[str]]:
    """Every sample name the gateway exports, with the labels seen on it."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


@pytest.mark.processes
def test_every_query_names_what_a_gateway_exports_and_prometheus_answers_it(
        tmp_path: Path, redis_server: RedisServer) -> None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        pytest.fail("prometheus is not installed; `make test` installs it (Debian package prometheus)")
    checked = subprocess.run([promtool, "check", "config", "--syntax-only", str(SCRAPE)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    env = {"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_TOKENS": "dash-token"}
    with gateway(tmp_path, env, command="demo") as gw:
        wait_for(lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01").status_code == 200, 15, "a book")
        gw.http.get("/v1/orderbook/BTC_USD?step=0.5")  # a 400, so that answers have two statuses
        with gw.http.stream("GET", "/v1/stream?channels=orderbook:BTC_USD:0.01") as stream:
            lines = stream.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines) == "retry: 2000"
            wait_for(lambda: _value(gw.http.get("/metrics").text, "coinsuper_fanout_lag_seconds_count") > 0
                     and _value(gw.http.get("/metrics").text, "coinsuper_cluster_term") >= 1,
                     15, "the fan-out lag of an event streamed, and the term")
            names = exported(gw.http.get("/metrics").text)
            for title, expr in queries():
                used, labels = selectors(promql_parser.parse(concrete(expr)))
                for name in used:
                    assert name in names, f"{title}: {name} is not exported"
                if all(names[n] for n in used):  # a family with no sample yet shows no labels
                    known = set().union(*(names[n] for n in used)) | {"le"}
                    assert labels <= known, f"{title}: labels {labels - known} are not on {used}"
                else:
                    assert title in MAY_BE_EMPTY, f"{title}: {used} has no sample"
            _prometheus_answers(tmp_path, prometheus, gw.port)


def _value(metrics_text: str, name: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(metrics_text)
               for sample in family.samples if sample.name == name)


def _prometheus_answers(tmp_path: Path, prometheus: str, port: int) -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{web}/api/v1", timeout=10)

        def answer(query: str) -> list[Any] | None:
            try:
                body = api.get("/query", params={"query": query}).json()
            except (httpx.HTTPError, ValueError):
                return None
            assert body["status"] == "success", (query, body)
            return list(body["data"]["result"])

        # Enough scrapes that a rate over 10 s has points to work with.
        def scrapes() -> float:
            found = answer('count_over_time(up{job="coinsuper-gateway"}[1m])')
            return float(found[0]["value"][1]) if found else 0

        wait_for(lambda: scrapes() >= 6 and answer('up{job="coinsuper-gateway"} == 1'), 40,
                 "six scrapes of the gateway")
        empty = [title for title, expr in queries() if not answer(concrete(expr, "10s"))]
        assert len(empty) < len(queries())
        assert set(empty) <= MAY_BE_EMPTY, f"no data for {sorted(set(empty) - MAY_BE_EMPTY)}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()
