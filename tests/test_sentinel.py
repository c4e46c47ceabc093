"""A cluster on a replicated Redis that Sentinel fails over: Debian's
redis-server as master and replica, three redis-sentinel processes
(down-after-milliseconds 1000), Mosquitto playing the exchange, gateway
replicas as processes of their own. Nothing a client was given is lost when
the master dies; where the newest entries are lost the clients get `reset`,
never a hole."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.cli import free_port
from tests.support import REPO, EventStream, GatewayProcess, RedisServer, Sentinels, wait_for
from tests.test_cluster import (
    TTL_MS,
    Cluster,
    add_with_repeats,
    log_trades,
    running,
    stream,
    until_delivered,
    wait_serving,
)
from tests.world import World, trades_of

pytestmark = pytest.mark.processes

DOWN_AFTER_MS = 1000


class SentinelCluster(Cluster):
    """Replicas that find their Redis through the Sentinels."""

    def __init__(self, world: World, sentinels: Sentinels) -> None:
        super().__init__(world, sentinels.master)
        self.sentinels = sentinels

    def start(self, node: str, port: int | None = None, **env: str) -> GatewayProcess:
        return super().start(node, port, GATEWAY_REDIS_URL="", **{**self.sentinels.env, **env})


SENTINEL_PASSWORD = "sentinel-secret-4411"


@pytest.fixture
def sentinels(request: pytest.FixtureRequest, world: World) -> Iterator[Sentinels]:
    """The sentinels; a test marked `sentinel_password` gets ones that need a password."""
    password = SENTINEL_PASSWORD if request.node.get_closest_marker("sentinel_password") else ""
    group = Sentinels(world.workdir, down_after_ms=DOWN_AFTER_MS, password=password)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def cluster(world: World, sentinels: Sentinels) -> Iterator[Cluster]:
    yield from running(SentinelCluster(world, sentinels))


def metric(replica: GatewayProcess, name: str) -> float:
    text = replica.http.get("/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def pushing_until(world: World, streams: list[EventStream], start: int, timeout: float) -> float | None:
    """Trades pushed (with repeats) until one push reaches every stream within
    a second of it, every trade before it too: when (monotonic), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        add_with_repeats(world, 1)
        pushed = len(world.tape.trades)
        settle = time.monotonic() + 1.0  # the exchange pushes every 1-2 s
        while time.monotonic() < settle:
            if all(len(trades_of(s)) >= pushed - start for s in streams):
                return time.monotonic()
            time.sleep(0.05)
    return None


def every_trade_once(world: World, streams: list[EventStream], start: int) -> list[dict[str, Any]]:
    expected = world.tape.as_events(start)
    until_delivered(world, lambda: all(trades_of(s) == expected for s in streams), 15,
                    "every trade on every stream")
    return expected


def test_the_master_killed_during_trade_pushes_loses_nothing_and_the_old_one_comes_back_a_replica(
        cluster: Cluster, sentinels: Sentinels, world: World) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    leader = cluster.leader()
    assert cluster.report(leader)["redis"]["master"] == f"127.0.0.1:{sentinels.master.port}"
    world.tape.add(3)
    wait_serving(world, a, b)
    start = len(world.tape.trades)
    streams = [stream(a), stream(b)]
    for _ in range(5):
        add_with_repeats(world, 3)
        time.sleep(0.2)
    sentinels.master.kill()
    killed = time.monotonic()
    # During the failover: not ready, the last state answered (marked stale
    # once it is), streams open.
    wait_for(lambda: b.http.get("/readyz").status_code == 503, 5, "/readyz 503 during the failover")
    assert b.http.get("/v1/trades/BTC_USD?wait=0").status_code == 200
    served_at = pushing_until(world, streams, start, DOWN_AFTER_MS / 1000 + 15)
    wait_for(lambda: sentinels.master_port() == sentinels.replica.port, 15, "the failover")
    promoted_at = time.monotonic()
    assert served_at is not None, (f"data did not flow again: {len(world.tape.trades) - start} trades pushed, "
                                   f"streams have {[len(trades_of(s)) for s in streams]}, resets "
                                   f"{[len(s.named('reset')) for s in streams]}, log {len(log_trades(sentinels.replica))}")
    expected = every_trade_once(world, streams, start)
    took = served_at - killed
    print(f"\nmaster killed: data flowed again after {took:.1f} s (down-after {DOWN_AFTER_MS} ms; "
          f"the sentinels named the new master by {promoted_at - killed:.1f} s)")
    assert took < DOWN_AFTER_MS / 1000 + 5 + 3  # down-after, the failover (its timeout), 3 s
    for s in streams:
        assert trades_of(s) == expected  # once each, in order, identical ones included
        assert s.named("reset") == []  # nothing a client was given was lost
        assert any("Redis" in str(status.get("reason")) for status in s.named("status")), s.named("status")
        assert not s.ended  # the stream stayed open throughout
        s.close()
    assert sentinels.replica.role() == "master"
    assert log_trades(sentinels.replica)[-len(expected):] == expected
    new_leader = cluster.leader()
    assert cluster.report(new_leader)["redis"]["master"] == f"127.0.0.1:{sentinels.replica.port}"
    for replica in (a, b):
        wait_for(lambda r=replica: world.tape.push_book() > 0 and r.http.get("/readyz").status_code == 200, 15,
                 "ready again (the books pushed again)", interval=0.5)
    # The old master restarted (empty: no persistence): the sentinels make it
    # a replica of the new master; no gateway replica follows it, and nothing
    # it held is served twice.
    old = sentinels.master
    old.start()
    wait_for(lambda: old.role() == "slave" and "master_link_status:up" in old.cli("info", "replication"),
             20, "the old master to replicate the new one")
    again = [stream(a, s.last_id) for s in streams]
    mid = len(world.tape.trades)
    for _ in range(3):
        add_with_repeats(world, 3)
        time.sleep(0.3)
    later = every_trade_once(world, again, mid)
    for node in ("a", "b"):
        assert cluster.report(node)["redis"]["master"] == f"127.0.0.1:{sentinels.replica.port}"
    for s in again:
        assert trades_of(s) == later and s.named("reset") == []
        s.close()
    assert log_trades(old)[-len(expected + later):] == expected + later  # it holds the new master's log


def segments(s: EventStream | Resuming) -> list[list[dict[str, Any]]]:
    """A stream's trades, split at each reset."""
    parts: list[list[dict[str, Any]]] = [[]]
    for event in list(s.events):
        if event.get("event") == "reset":
            parts.append([])
        elif event.get("event") == "trade":
            parts[-1].append(json.loads(event["data"])["data"])
    return parts


def contiguous(part: list[dict[str, Any]], history: list[dict[str, Any]]) -> bool:
    """Whether ``part`` is a run of the exchange's history with nothing left out."""
    if not part:
        return True
    for first in (i for i, trade in enumerate(history) if trade == part[0]):
        if history[first:first + len(part)] == part:
            return True
    return False


class Resuming:
    """An SSE client that resumes with its last id whenever its stream ends,
    as EventSource does: every event of every connection, in order."""

    def __init__(self, replica: GatewayProcess) -> None:
        self.replica = replica
        self.parts = [stream(replica)]

    def poll(self) -> None:
        if self.parts[-1].ended:
            last = next((p.last_id for p in reversed(self.parts) if p.last_id), None)
            self.parts.append(stream(self.replica, last))

    @property
    def events(self) -> list[dict[str, str]]:
        return [event for part in self.parts for event in list(part.events)]

    def close(self) -> None:
        for part in self.parts:
            part.close()


def test_newest_entries_lost_with_no_replica_confirming_give_a_reset_never_a_hole(
        cluster: Cluster, sentinels: Sentinels, world: World) -> None:
    env = {"GATEWAY_REDIS_MIN_REPLICAS": "0"}
    a, b = cluster.start("a", **env), cluster.start("b", **env)
    cluster.leader()
    world.tape.add(3)
    wait_serving(world, a, b)
    clients = [Resuming(a), Resuming(b)]

    def delivered(count: int) -> bool:
        for client in clients:
            client.poll()
        return all(sum(map(len, segments(c))) >= count for c in clients)

    start = len(world.tape.trades)
    add_with_repeats(world, 5)
    wait_for(lambda: delivered(len(world.tape.trades) - start), 10, "the first trades")
    # The replica's link is cut: it follows a master that is not there (a
    # SIGSTOP would not do: the kernel keeps taking what the master sends).
    # The sentinels would set it right only after failover-timeout (5 s).
    sentinels.replica.cli("replicaof", "127.0.0.1", str(free_port()))
    for _ in range(3):
        add_with_repeats(world, 4)
        time.sleep(0.3)
    # Handed out at once (no replica to wait for), and never replicated.
    wait_for(lambda: delivered(len(world.tape.trades) - start), 10, "the trades the replica never got")
    held = int(sentinels.master.cli("xlen", "coinsuper:log"))
    assert int(sentinels.replica.cli("xlen", "coinsuper:log")) < held
    sentinels.master.kill()
    wait_for(lambda: sentinels.master_port() == sentinels.replica.port, 20, "the failover")

    def told() -> bool:
        world.tape.push()
        world.tape.push_book()
        for client in clients:
            client.poll()
        return all(any(e.get("event") == "reset" for e in c.events) for c in clients)

    wait_for(told, 20, "a reset on every client (the newest entries are gone)", interval=0.3)
    add_with_repeats(world, 3)
    history = world.tape.as_events(0)

    def newest() -> bool:
        world.tape.push()
        for client in clients:
            client.poll()
        return all(segments(c)[-1][-1:] == history[-1:] for c in clients)

    wait_for(newest, 15, "the newest trade after the reset", interval=0.3)
    for client in clients:
        parts = segments(client)
        assert len(parts) >= 2
        for part in parts:
            assert contiguous(part, history), "a hole in what a client was given"
        client.close()


@pytest.mark.sentinel_password
def test_a_sentinel_killed_changes_nothing_and_a_dead_replica_slows_batches_only(
        cluster: Cluster, sentinels: Sentinels, world: World) -> None:
    a, b = cluster.start("a", GATEWAY_REDIS_WAIT_MS="300"), cluster.start("b", GATEWAY_REDIS_WAIT_MS="300")
    leader = cluster.leader()
    world.tape.add(3)
    wait_serving(world, a, b)
    start = len(world.tape.trades)
    streams = [stream(a), stream(b)]
    sentinels.kill_sentinel(0)
    add_with_repeats(world, 5)
    assert pushing_until(world, streams, start, 10) is not None
    assert cluster.leader() == leader and metric(cluster.replicas[leader], "coinsuper_cluster_unreplicated_total") == 0
    sentinels.replica.kill()  # no replica confirms: each batch waits GATEWAY_REDIS_WAIT_MS, then goes out
    for _ in range(4):
        add_with_repeats(world, 2)
        time.sleep(0.4)
    expected = every_trade_once(world, streams, start)
    for s in streams:
        assert trades_of(s) == expected and s.named("reset") == []
        s.close()
    assert cluster.leader() == leader
    assert metric(cluster.replicas[leader], "coinsuper_cluster_unreplicated_total") >= 4
    assert "Redis replicas confirmed a write within 300 ms" in cluster.replicas[leader].log_text()
    # The sentinels' password is a secret: in no log and no answer.
    answers = cluster.replicas[leader].http.get("/v1/cluster").text + cluster.replicas[leader].http.get("/metrics").text
    assert SENTINEL_PASSWORD not in answers
    assert all(SENTINEL_PASSWORD not in r.log_text() for r in cluster.replicas.values())


def test_the_leader_killed_during_a_failover_leaves_one_leader_and_every_trade_once(
        cluster: Cluster, sentinels: Sentinels, world: World) -> None:
    for node in "abc":
        cluster.start(node)
    leader = cluster.leader()
    term = cluster.report(leader)["term"]
    followers = [n for n in "abc" if n != leader]
    world.tape.add(3)
    wait_serving(world, *(cluster.replicas[n] for n in followers))
    start = len(world.tape.trades)
    streams = [stream(cluster.replicas[n]) for n in followers]
    for _ in range(3):
        add_with_repeats(world, 3)
        time.sleep(0.2)
    sentinels.master.kill()
    time.sleep(0.5)
    cluster.kill(leader)
    wait_for(lambda: sentinels.master_port() == sentinels.replica.port, 20, "the failover")
    assert pushing_until(world, streams, start, TTL_MS / 1000 + 15) is not None
    new = cluster.leader(followers)
    assert new != leader and cluster.report(new)["term"] > term  # terms only grow
    expected = every_trade_once(world, streams, start)
    for s in streams:
        assert trades_of(s) == expected and s.named("reset") == []
        s.close()
    assert log_trades(sentinels.replica)[-len(expected):] == expected


def test_compose_sentinel_settings_run_on_debians_redis_and_sentinel(tmp_path: Path) -> None:
    """compose.sentinel.yaml's Redis options and Sentinel configuration, on
    this machine's redis-server and redis-sentinel (its host names pointed at
    loopback): they start, replicate, monitor, and the gateways are told the
    name the Sentinels monitor."""
    compose = yaml.safe_load((REPO / "compose.sentinel.yaml").read_text())
    services = compose["services"]
    master = RedisServer(tmp_path, extra=_options(services["redis"]["command"], {}))
    master.start()
    replica = RedisServer(tmp_path, extra=_options(services["redis-replica-1"]["command"],
                                                   {"redis 6379": f"127.0.0.1 {master.port}"}))
    replica.start()
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(str(compose["configs"]["sentinel"]["content"])
                      .replace("port 26379", f"port {port}")
                      .replace("coinsuper redis 6379", f"coinsuper 127.0.0.1 {master.port}"))
    sentinel = subprocess.Popen(["redis-sentinel", str(config)], stdout=subprocess.DEVNULL)
    try:
        assert master.cli("config", "get", "min-replicas-to-write").split() == ["min-replicas-to-write", "1"]
        wait_for(lambda: "master_link_status:up" in replica.cli("info", "replication"), 10, "replication")
        wait_for(lambda: "127.0.0.1" in subprocess.run(
            ["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", "coinsuper"],
            capture_output=True, text=True).stdout, 10, "the sentinel to monitor the master")
    finally:
        sentinel.kill()
        sentinel.wait(10)
        replica.kill()
        master.kill()
    for node in ("gateway-1", "gateway-2", "gateway-3"):
        env = services[node]["environment"]
        assert env["GATEWAY_REDIS_MASTER"] == "coinsuper" and env["GATEWAY_REDIS_URL"] == ""
        assert {h.split(":")[0] for h in env["GATEWAY_REDIS_SENTINELS"].split(",")} == {
            "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)


def _options(command: list[str], replace: dict[str, str]) -> list[str]:
    """The redis-server options of a compose command, for loopback."""
    line = command[-1].removeprefix("exec redis-server ")
    for old, new in replace.items():
        line = line.replace(old, new)
    options = shlex.split(line)
    at = options.index("--replica-announce-ip")
    options[at + 1] = "127.0.0.1"
    return options
