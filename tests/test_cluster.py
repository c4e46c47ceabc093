"""Several replicas on one Redis: one leader holds the upstream, any replica
serves and resumes any client, and nothing is lost or repeated when the
leader dies, Redis stalls or everything restarts. Real parts only: Mosquitto
playing the exchange, redis-server, gateways as processes of their own."""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.cli import free_port
from tests.support import REPO, EventStream, GatewayProcess, RedisServer, port_open, wait_for
from tests.world import CHANNELS, World, trades_of

pytestmark = [pytest.mark.processes, pytest.mark.redis_keep]

TTL_MS = 2000


class Cluster:
    """Replicas of one cluster, started and killed by the test."""

    def __init__(self, world: World, redis: RedisServer) -> None:
        self.world = world
        self.redis = redis
        self.replicas: dict[str, GatewayProcess] = {}
        self.logs: list[Path] = []

    def start(self, node: str, port: int | None = None, **env: str) -> GatewayProcess:
        replica = GatewayProcess(
            self.world.workdir,
            {
                "COINSUPER_URL": self.world.mosquitto.url("tcp"),
                "COINSUPER_SUBSCRIBE": CHANNELS,
                "GATEWAY_STALE_FACTOR": "1000",
                "GATEWAY_REDIS_URL": self.redis.url,
                "GATEWAY_NODE_ID": node,
                "GATEWAY_LEADER_TTL_MS": str(TTL_MS),
                "GATEWAY_CHECKPOINT_S": "1",
                **env,
            },
            port=port,
        )
        self.replicas[node] = replica
        self.logs.append(replica.log)
        return replica

    def report(self, node: str) -> dict[str, Any]:
        answer = self.replicas[node].http.get("/v1/cluster")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def leader(self, among: list[str] | None = None, timeout: float = 15) -> str:
        """The one node every running replica names as leader, once they agree."""

        def agreed() -> str | None:
            nodes = among or [n for n, r in self.replicas.items() if r.process.poll() is None]
            reports = [self.report(n) for n in nodes]
            leaders = {r["leader"] for r in reports}
            roles = [r["node"] for r in reports if r["role"] == "leader"]
            if len(leaders) == 1 and len(roles) == 1 and roles[0] in leaders:
                return roles[0]
            return None

        return str(wait_for(agreed, timeout, "the replicas to agree on one leader"))

    def kill(self, node: str) -> None:
        replica = self.replicas.pop(node)
        replica.process.kill()
        replica.process.wait(10)
        replica.http.close()

    def stop_all(self) -> None:
        for node in list(self.replicas):
            self.replicas.pop(node).stop()


@pytest.fixture
def cluster(world: World, redis_server: RedisServer) -> Iterator[Cluster]:
    yield from running(Cluster(world, redis_server))


def running(group: Cluster) -> Iterator[Cluster]:
    """A fixture's group of replicas: stopped after the test, whose logs must
    show no fault of the replicas' own."""
    try:
        yield group
    finally:
        group.stop_all()
    for path in group.logs:
        text = path.read_text(errors="replace")
        assert "Traceback" not in text and " ERROR " not in text, f"{path}:\n{text[-3000:]}"


def wait_serving(world: World, *replicas: GatewayProcess) -> None:
    """Until every replica serves the trades: the window is pushed again as the
    exchange does (a push taken by a leader that lost its lease meanwhile is
    not in the log: the next one brings its trades)."""

    def all_serving() -> bool:
        world.tape.push()
        return all(serving(replica) for replica in replicas)

    wait_for(all_serving, 15, "the replicas to serve trades", interval=0.3)


def until_delivered(world: World, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``check`` holds, the trade window pushed again as the exchange does."""

    def pushed() -> bool:
        world.tape.push()
        return check()

    wait_for(pushed, timeout, what, interval=0.3)


def serving(replica: GatewayProcess) -> bool:
    try:
        return replica.http.get("/v1/trades/BTC_USD?wait=0").status_code == 200
    except httpx.HTTPError:
        return False


def stream(replica: GatewayProcess, last_id: str | None = None) -> EventStream:
    headers = {"Last-Event-ID": last_id} if last_id else None
    return EventStream(f"{replica.base}/v1/stream?channels={CHANNELS}", headers)


def add_with_repeats(world: World, n: int) -> None:
    """Trades that include identical ones (same price, quantity, side and
    millisecond): each is a distinct trade all the same."""
    for _ in range(n):
        world.tape.add(1, push=False)
        if world.tape.rng.random() < 0.3:
            world.tape.trades.append(dict(world.tape.trades[-1]))
    world.tape.push()


def log_trades(redis: RedisServer) -> list[dict[str, Any]]:
    """The trade events the cluster's log holds, read straight from Redis."""
    raw = redis.cli("--raw", "XRANGE", "coinsuper:log", "-", "+")
    trades = []
    for line in raw.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        for name, _conflatable, data in entry["ev"]:
            if name == "trade":
                trades.append(json.loads(data)["data"])
    return trades


def test_one_leader_and_every_replica_serves_the_same_data(cluster: Cluster, world: World) -> None:
    a, b, c = cluster.start("a"), cluster.start("b"), cluster.start("c")
    leader = cluster.leader()
    report = cluster.report(leader)
    assert report["term"] >= 1 and report["epoch"]
    wait_for(lambda: {n["node"] for n in cluster.report(leader)["nodes"]} == {"a", "b", "c"}, 5,
             "every replica in the report")
    epochs = {cluster.report(n)["epoch"] for n in "abc"}
    assert len(epochs) == 1
    world.tape.add(5)
    world.tape.push_book()
    wait_serving(world, a, b, c)
    answers = [r.http.get("/v1/trades/BTC_USD").json()["data"] for r in (a, b, c)]
    assert answers[0] == answers[1] == answers[2] == list(reversed(world.tape.as_events(0)))
    # Only the leader holds upstream links: the broker sees one session per client id.
    followers = [n for n in "abc" if n != leader]
    for node in followers:
        body = cluster.replicas[node].http.get("/v1/channels").json()
        assert body["links"] == []
        assert {ch["link"] for ch in body["channels"]} == {"leader"}
    assert cluster.replicas[leader].http.get("/readyz").status_code == 200
    for node in "abc":  # metrics name their node and role; a follower counts the log's channels
        text = cluster.replicas[node].http.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        role = [s for s in families["coinsuper_cluster_leader"].samples]
        assert [(s.labels["node"], s.value) for s in role] == [(node, 1 if node == leader else 0)]
        assert [s.value for s in families["coinsuper_cluster_redis_up"].samples] == [1]
        kinds = {s.labels["kind"] for s in families["coinsuper_upstream_messages"].samples}
        assert kinds == {"trades", "orderbook"}
    for node in followers:
        wait_for(lambda n=node: cluster.replicas[n].http.get("/readyz").status_code == 200, 10,
                 "the followers to be ready")
    # A follower's streams in diff mode: the leader's books, as diffs that rebuild them.
    from tests.test_book_diffs import Exchange, rebuilt, sse_events

    follower = cluster.replicas[followers[0]]
    diffs = EventStream(f"{follower.base}/v1/stream?channels=orderbook:BTC_USD:0.01&books=diff")
    exchange = Exchange(world)
    exchange.books(follower, 5)
    wait_for(lambda: len(diffs.named("orderbook_diff")) >= 4, 10, "the follower's diffs")
    books, count = rebuilt(sse_events(diffs))
    assert count >= 4 and all(books[seq] == exchange.rest[seq] for seq in exchange.one_at_a_time)
    diffs.close()


def test_the_leaders_death_during_trade_pushes_loses_and_repeats_nothing(
    cluster: Cluster, world: World
) -> None:
    for node in "abc":
        cluster.start(node)
    leader = cluster.leader()
    followers = [n for n in "abc" if n != leader]
    world.tape.add(3)
    wait_serving(world, *(cluster.replicas[n] for n in followers))
    start = len(world.tape.trades)
    streams = [stream(cluster.replicas[n]) for n in followers]
    for _ in range(5):
        add_with_repeats(world, 3)
        time.sleep(0.2)
    cluster.kill(leader)
    killed = time.monotonic()
    served_at = None
    # Pushes while there is no leader, and after a new one took over, every
    # 0.2 s (the exchange pushes every 1-2 s): when did a new trade first reach
    # the streams again?
    deadline = killed + TTL_MS / 1000 + 10
    while time.monotonic() < deadline:
        add_with_repeats(world, 1)
        pushed = len(world.tape.trades)
        time.sleep(0.2)
        if served_at is None and all(len(trades_of(s)) >= pushed - start for s in streams):
            served_at = time.monotonic()
        if served_at is not None and time.monotonic() - served_at > 1:
            break
    assert served_at is not None, "no new leader served"
    took = served_at - killed
    assert took < TTL_MS / 1000 + 2, f"a new leader served {took:.1f} s after the kill"
    new = cluster.leader(followers)
    assert new != leader and cluster.report(new)["leader"] == new
    expected = world.tape.as_events(start)

    def served_everything() -> bool:
        world.tape.push()
        return all(trades_of(s) == expected for s in streams)

    wait_for(served_everything, 10, "every trade on every stream")
    for s in streams:
        assert trades_of(s) == expected  # once each, in order, identical ones included
        s.close()
    assert log_trades(cluster.redis)[-len(expected):] == expected


def test_a_client_resumes_on_another_replica(cluster: Cluster, world: World) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    cluster.leader()
    world.tape.add(3)
    wait_serving(world, a, b)
    start = len(world.tape.trades)
    first = stream(a)
    add_with_repeats(world, 4)
    until_delivered(world, lambda: len(trades_of(first)) == len(world.tape.trades) - start, 10, "trades on a")
    last = first.last_id
    seen = len(trades_of(first))
    first.close()
    add_with_repeats(world, 5)  # missed while the client is away
    time.sleep(0.5)
    again = stream(b, last)
    add_with_repeats(world, 2)
    expected = world.tape.as_events(start + seen)
    until_delivered(world, lambda: trades_of(again) == expected, 10, "the missed trades, then the new ones, on b")
    assert not again.named("reset")
    again.close()


def test_all_replicas_restarted_keep_the_ids_and_an_empty_redis_resets(
    cluster: Cluster, world: World
) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    cluster.leader()
    world.tape.add(3)
    wait_serving(world, a, b)
    epoch = cluster.report("a")["epoch"]
    start = len(world.tape.trades)
    client = stream(b)
    add_with_repeats(world, 3)
    until_delivered(world, lambda: trades_of(client) == world.tape.as_events(start), 10, "trades on b")
    last = client.last_id
    client.close()
    ports = {node: replica.port for node, replica in cluster.replicas.items()}
    cluster.stop_all()
    mid = len(world.tape.trades)
    add_with_repeats(world, 2)  # while no replica runs: the next window still holds them
    for node, port in ports.items():
        cluster.start(node, port=port)
    cluster.leader()
    assert cluster.report("a")["epoch"] == epoch
    resumed = stream(cluster.replicas["b"], last)
    add_with_repeats(world, 1)
    until_delivered(world, lambda: trades_of(resumed) == world.tape.as_events(mid), 15,
             "every trade since the last id, once")
    assert not resumed.named("reset")
    last = resumed.last_id
    resumed.close()
    # Redis restarted empty: a new epoch, and the old id is told to reset.
    cluster.redis.restart(empty=True)
    wait_for(lambda: cluster.report("a")["epoch"] != epoch, 15, "a new epoch")
    cluster.leader()
    after = stream(cluster.replicas["a"], last)
    wait_for(lambda: after.named("reset"), 10, "a reset")

    def fresh_book() -> bool:
        world.tape.push_book()  # as the exchange does, every second or two
        return bool(after.named("orderbook"))

    wait_for(fresh_book, 10, "a fresh snapshot", interval=0.5)
    after.close()


def test_redis_paused_for_10_s_and_continued(cluster: Cluster, world: World) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    cluster.leader()
    world.tape.add(3)
    wait_serving(world, a, b)
    start = len(world.tape.trades)
    streams = [stream(a), stream(b)]
    add_with_repeats(world, 3)
    until_delivered(world, lambda: all(trades_of(s) == world.tape.as_events(start) for s in streams), 10,
             "trades on both")
    cluster.redis.freeze()
    try:
        paused = time.monotonic()
        while time.monotonic() - paused < 10:
            add_with_repeats(world, 1)
            time.sleep(0.5)
        for replica in (a, b):
            assert replica.process.poll() is None  # never crashed
            assert replica.http.get("/readyz").status_code == 503
            assert serving(replica)  # the last state, marked stale
        for s in streams:
            assert not s.ended and s.error is None  # streams stay open
            statuses = s.named("status")
            assert any(st["status"] == "stale" for st in statuses), statuses
        # A stream opened, or resumed, meanwhile is accepted too.
        opened, resumed = stream(b), stream(a, streams[0].last_id)
        assert opened.status == 200 and resumed.status == 200
        assert not resumed.named("reset")
        opened.close()
        resumed.close()
    finally:
        cluster.redis.thaw()
    thawed = time.monotonic()
    expected = world.tape.as_events(start)

    def flowing() -> bool:
        world.tape.push()
        return all(trades_of(s) == expected for s in streams)

    try:
        wait_for(flowing, 15, "data to flow again", interval=0.3)
    except AssertionError:
        got = [(len(trades_of(s)), s.ended, [e.get("id") for e in s.events[-6:]]) for s in streams]
        raise AssertionError(f"expected {len(expected)} trades, got {got}") from None
    took = time.monotonic() - thawed
    assert took < 5, f"data flowed again {took:.1f} s after Redis continued"
    for s in streams:
        assert not s.named("reset")
        s.close()


def test_a_paused_leader_cannot_write_after_another_took_over(
    cluster: Cluster, world: World
) -> None:
    cluster.start("a")
    cluster.start("b")
    old = cluster.leader()
    new = "b" if old == "a" else "a"
    world.tape.add(3)
    wait_serving(world, cluster.replicas[new])
    start = len(world.tape.trades)
    client = stream(cluster.replicas[new])
    add_with_repeats(world, 2)
    until_delivered(world, lambda: trades_of(client) == world.tape.as_events(start), 10, "trades")
    frozen = cluster.replicas[old].process
    frozen.send_signal(signal.SIGSTOP)
    try:
        add_with_repeats(world, 2)  # reaches the paused leader's socket: in flight for it
        wait_for(lambda: cluster.report(new)["role"] == "leader", TTL_MS / 1000 + 5,
                 "the other replica to take over")
        for _ in range(3):
            add_with_repeats(world, 2)
            time.sleep(0.3)
    finally:
        frozen.send_signal(signal.SIGCONT)
    add_with_repeats(world, 1)
    wait_for(lambda: cluster.report(old)["role"] == "follower", 10, "the old leader to follow")
    expected = world.tape.as_events(start)

    def delivered() -> bool:
        world.tape.push()
        return trades_of(client) == expected

    wait_for(delivered, 10, "every trade once on the new leader's stream", interval=0.3)
    # The log holds every trade once, in order: nothing of the old leader's came after its term.
    assert log_trades(cluster.redis) == world.tape.as_events(0)
    assert cluster.report(old)["leader"] == new
    client.close()


_OPENED = re.compile(r"New client connected from \S+ as (\S+) ")
_CLOSED = re.compile(r"Client (\S+) (?:closed its connection|disconnected|has exceeded timeout)")
_TAKEN = re.compile(r"Client (\S+) already connected, closing old connection")


def overlapping_sessions(broker_log: str) -> list[str]:
    """Client ids the broker saw connected twice at once, from its log."""
    connected: set[str] = set()
    overlaps = []
    for line in broker_log.splitlines():
        if taken := _TAKEN.search(line):
            overlaps.append(taken.group(1))
        elif opened := _OPENED.search(line):
            if opened.group(1) in connected:
                overlaps.append(opened.group(1))
            connected.add(opened.group(1))
        elif closed := _CLOSED.search(line):
            connected.discard(closed.group(1))
    return overlaps


def test_exactly_one_leader_through_a_minute_of_kills_and_restarts(
    cluster: Cluster, world: World
) -> None:
    ports = {node: cluster.start(node).port for node in "abc"}
    cluster.leader()
    rng = random.Random(13)
    terms: list[int] = []
    samples = with_leader = kills = 0
    deadline = time.monotonic() + 60
    # At least a minute and at least 15 kills: a replica's start takes longer
    # on a loaded machine, and the kills, not the clock, are what is tested.
    while time.monotonic() < deadline or kills < 15:
        assert time.monotonic() < deadline + 90, f"only {kills} kills in two and a half minutes"
        victim = rng.choice("abc")
        cluster.kill(victim)  # SIGKILL: the leader, a third of the time
        kills += 1
        world.tape.add(1)
        settle = time.monotonic() + rng.uniform(1.0, 4.0)
        while time.monotonic() < settle:
            reports = []
            for node in list(cluster.replicas):
                with contextlib.suppress(httpx.HTTPError):
                    reports.append(cluster.report(node))
            leaders = [r["node"] for r in reports if r["role"] == "leader"]
            assert len(leaders) <= 1, reports
            samples += 1
            with_leader += bool(leaders)
            terms.extend(r["term"] for r in reports if r["role"] == "leader")
            time.sleep(0.2)
        cluster.start(victim, port=ports[victim])
    cluster.leader()
    assert terms == sorted(terms), "the term never goes back"
    assert with_leader > samples / 2
    # The broker saw at most one session per client id at any time.
    assert overlapping_sessions(world.mosquitto.log_text()) == []


def haproxy_config(ports: list[int], listen: int) -> str:
    """compose.yaml's HAProxy configuration, pointed at this test's replicas."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    text = str(compose["configs"]["haproxy"]["content"])
    text = text.replace(" resolvers docker", "")  # Docker's DNS: not here
    text = re.sub(r"^resolvers docker\n(?:  .*\n)*", "", text, flags=re.MULTILINE)
    text = text.replace("bind :8000", f"bind 127.0.0.1:{listen}")
    # compose.yaml raises HAProxy's descriptor limit for its 50,000; a test needs few.
    text = text.replace("maxconn 50000", "maxconn 2000")
    for index, port in enumerate(ports, 1):
        text = text.replace(f"gateway-{index}:8000", f"127.0.0.1:{port}")
    return text


def test_the_compose_load_balancer_streams_and_resumes_on_another_replica(
    cluster: Cluster, world: World, tmp_path: Path
) -> None:
    """HAProxy with compose.yaml's own settings in front of the replicas: a
    stream through it outlives the replica that served it."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.fail("haproxy is not installed; `make test` installs it (Debian package haproxy)")
    a, b = cluster.start("a"), cluster.start("b")
    cluster.leader()
    unused = free_port()  # the third replica of compose.yaml is not running: checked down
    listen = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config([a.port, b.port, unused], listen))
    subprocess.run([binary, "-c", "-f", str(config)], check=True, capture_output=True)
    proxy = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(listen), 10, "haproxy to listen")
        front = f"http://127.0.0.1:{listen}"
        world.tape.add(3)

        def ready() -> bool:
            world.tape.push()  # every configured channel live: the replicas are ready
            world.tape.push_book()
            return httpx.get(f"{front}/readyz", timeout=5).status_code == 200

        wait_for(ready, 20, "a ready replica behind haproxy", interval=0.5)
        assert httpx.get(f"{front}/v1/cluster").json()["node"] in ("a", "b")
        start = len(world.tape.trades)
        first = EventStream(f"{front}/v1/stream?channels={CHANNELS}")
        add_with_repeats(world, 3)
        until_delivered(world, lambda: trades_of(first) == world.tape.as_events(start), 10, "trades through haproxy")
        serving_node = next(node for node, replica in cluster.replicas.items()
                            if replica.http.get("/v1/channels").json()["open_streams"] == 1)
        cluster.kill(serving_node)  # the replica that serves the stream dies
        wait_for(lambda: first.ended, 10, "the stream to end with its replica")
        add_with_repeats(world, 2)
        again = EventStream(f"{front}/v1/stream?channels={CHANNELS}",
                            {"Last-Event-ID": str(first.last_id)})
        expected = world.tape.as_events(start)

        def complete() -> bool:
            world.tape.push()
            return trades_of(first) + trades_of(again) == expected

        wait_for(complete, 15, "every trade once across the two replicas", interval=0.3)
        assert again.status == 200
        assert not again.named("reset")
        again.close()
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_a_followers_client_makes_the_leader_subscribe(cluster: Cluster, world: World) -> None:
    """Demand is the cluster's: a channel asked for on a follower is
    subscribed by the leader within a second, and served on the follower."""
    a = cluster.start("a", COINSUPER_SUBSCRIBE="trades:BTC_USD")
    b = cluster.start("b", COINSUPER_SUBSCRIBE="trades:BTC_USD")
    leader = cluster.leader()
    follower = b if leader == "a" else a
    assert follower.http.get("/v1/orderbook/BTC_USD?step=0.01&wait=0").status_code == 503
    asked = time.monotonic()

    def subscribed() -> bool:
        channels = cluster.replicas[leader].http.get("/v1/channels").json()["channels"]
        return any(c["channel"] == "orderbook:BTC_USD:0.01" for c in channels)

    wait_for(subscribed, 5, "the leader to subscribe the follower's channel")
    assert time.monotonic() - asked < 1.5

    def served() -> bool:
        world.tape.push_book()
        return follower.http.get("/v1/orderbook/BTC_USD?step=0.01&wait=0").status_code == 200

    wait_for(served, 10, "the book on the follower", interval=0.3)
    leaders = cluster.replicas[leader]
    wait_for(lambda: follower.http.get("/v1/orderbook/BTC_USD?step=0.01").content
             == leaders.http.get("/v1/orderbook/BTC_USD?step=0.01").content, 5, "the same answer on both")


def test_idle_release_counts_every_replicas_clients(cluster: Cluster, world: World) -> None:
    """A stream on a follower keeps its channel subscribed on the leader past
    the idle time; once no replica's client wants it, the leader releases it."""
    idle = {"GATEWAY_IDLE_RELEASE_S": "2", "COINSUPER_SUBSCRIBE": "trades:BTC_USD"}
    a, b = cluster.start("a", **idle), cluster.start("b", **idle)
    leader = cluster.leader()
    follower = b if leader == "a" else a
    held = EventStream(f"{follower.base}/v1/stream?channels=orderbook:BTC_USD:0.01")

    def subscribed() -> bool:
        channels = cluster.replicas[leader].http.get("/v1/channels").json()["channels"]
        return any(c["channel"] == "orderbook:BTC_USD:0.01" for c in channels)

    wait_for(subscribed, 5, "the leader to subscribe the follower's stream's channel")
    time.sleep(4)  # twice the idle time, with the only client on the follower
    assert subscribed(), "released although a follower's client follows it"
    held.close()
    wait_for(lambda: not subscribed(), 10, "the channel released once nobody follows it")
