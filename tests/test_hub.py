"""The hub's Feed port, run against both implementations: the in-process
hub and a cluster replica's (its leader, writing through a real redis-server):
what a stream starts with, resuming, changing channels, first data."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.cluster.redislog import RedisCluster
from app.cluster.replica import RedisLog
from app.config import load_settings
from app.domain import books
from app.domain.channels import parse_channel
from app.domain.decode import Trade, TradeWindow, decode
from app.domain.values import OrderBook, Snapshot
from app.gateway import Gateway
from app.ports import Opening
from app.state.store import Store
from app.streams.admission import Streams
from app.streams.eventlog import LocalLog, RecentEvents
from app.streams.hub import Hub
from tests.sinks import Recorder, follow, line_form
from tests.support import RedisServer, sample

BOOK = parse_channel("orderbook:BTC_USD:0.01")
TRADES = parse_channel("trades:BTC_USD")
T0 = 1_532_686_080_000
_names = itertools.count()


class Hubs:
    """Makes hubs of one kind, and waits until what they were given is out."""

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self.tasks: list[asyncio.Task[None]] = []
        self.clusters: list[RedisCluster] = []

    async def make(self, replay: int = 100) -> Hub:
        if self.redis is None:
            return Hub(
                LocalLog(Store("ep"), RecentEvents(replay, 600_000)),
                Streams(100, 100),
                send_timeout_s=10,
            )
        log = RedisLog(Store, lambda: RecentEvents(replay, 600_000), checkpoint_s=3600)
        hub = Hub(log, Streams(100, 100), send_timeout_s=10)
        cluster = RedisCluster(self.redis, f"hub{next(_names)}", "a")
        self.clusters.append(cluster)
        await self.redis.set(cluster.keys["epoch"], "ep")
        term = await cluster.lead(60_000)
        assert term is not None
        await log.sync(cluster)
        log.writing = term
        self.tasks.append(asyncio.create_task(log.write_loop(cluster, 100_000)))
        return hub

    @staticmethod
    async def settle(hub: Hub) -> None:
        """What the hub was given is handed to streams (a leader writes it first)."""
        if isinstance(hub.log, RedisLog):
            await asyncio.wait_for(hub.log.written.wait(), 10)


@pytest.fixture
async def cluster_hubs(redis_server: RedisServer) -> AsyncIterator[Hubs]:
    """Hubs of cluster leaders, writing through a redis-server of their own."""
    redis = Redis(port=redis_server.port)
    made = Hubs(redis)
    try:
        yield made
    finally:
        for task in made.tasks:
            task.cancel()
        await asyncio.gather(*made.tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):  # closing may wait on a socket (redis-py #3941)
                await redis.aclose()


@pytest.fixture(params=["in-process", pytest.param("cluster", marks=pytest.mark.processes)])
def hubs(request: pytest.FixtureRequest) -> Hubs:
    if request.param == "in-process":
        return Hubs(None)
    made: Hubs = request.getfixturevalue("cluster_hubs")
    return made


def open_stream(local: Hub, channels: list, last_event_id: str | None) -> Opening:  # type: ignore[type-arg]
    return local.open("address:a", channels, last_event_id, 10)


async def book(hubs: Hubs, local: Hub, ts: int) -> None:
    update = decode(BOOK, sample("orderBook_BTC_USD_0.01.json"))
    assert isinstance(update, Snapshot)
    local.apply(BOOK, update, ts)
    await hubs.settle(local)


async def trades(hubs: Hubs, local: Hub, *stamps: int) -> None:
    local.apply(TRADES, TradeWindow(tuple(Trade("1.00", "0.1", "buy", ts) for ts in stamps)), T0)
    await hubs.settle(local)


async def test_a_new_stream_starts_with_the_snapshots_and_its_position(hubs: Hubs) -> None:
    local = await hubs.make()
    await book(hubs, local, T0)
    await trades(hubs, local, T0)
    opening = open_stream(local, [BOOK, TRADES], None)
    assert [e.name for e in opening.backlog] == ["orderbook"]  # trades are a log: none replayed
    assert not opening.reset and opening.position == "ep-2"
    await trades(
        hubs, local, T0, T0 + 1
    )  # published before the sink is there: written with the opening
    sink = Recorder()
    local.attach(opening.stream, sink, b"")
    assert sink.seqs() == [3]


async def test_resuming_gets_what_was_missed_once_and_a_foreign_id_resets(hubs: Hubs) -> None:
    local = await hubs.make()
    await trades(hubs, local, T0)
    position = local.position()
    await trades(hubs, local, T0, T0 + 1, T0 + 2)
    await book(hubs, local, T0)
    opening = open_stream(local, [TRADES, BOOK], position)
    assert [(e.name, e.seq) for e in opening.backlog] == [
        ("trade", 2),
        ("trade", 3),
        ("orderbook", 4),
    ]
    assert open_stream(local, [TRADES], "other-5").reset
    if not local.behind("ep-999"):
        assert open_stream(local, [TRADES], "ep-999").reset  # ahead of this process


async def test_past_the_replay_buffer_a_stream_resets_to_snapshots(hubs: Hubs) -> None:
    local = await hubs.make(replay=2)
    await book(hubs, local, T0)
    await trades(hubs, local, T0, T0 + 1, T0 + 2)
    opening = open_stream(local, [BOOK, TRADES], "ep-1")
    assert opening.reset and [e.name for e in opening.backlog] == ["orderbook"]


async def test_extending_restamps_snapshots_and_shrinking_stops_a_channel(hubs: Hubs) -> None:
    local = await hubs.make()
    await book(hubs, local, T0)
    opening = open_stream(local, [TRADES], None)
    sink = Recorder()
    local.attach(opening.stream, sink, b"")
    await trades(hubs, local, T0)
    backlog, reset = local.extend(opening.stream, [BOOK], None)
    assert not reset and [e.id for e in backlog] == [f"ep-{local.store.seq}"]  # ids never go back
    assert json.loads(backlog[0].data)["seq"] == 1  # the channel's own seq is the book's
    assert local.channels(opening.stream) == {TRADES.name, BOOK.name}
    local.shrink(opening.stream, [TRADES])
    written = sink.seqs()
    await trades(hubs, local, T0, T0 + 5)
    assert sink.seqs() == written


async def test_a_leaders_streams_see_only_what_the_log_holds(hubs: Hubs) -> None:
    """Until a change is written (in the cluster: appended to Redis), no
    stream is given its events, its snapshot or a position past it."""
    local = await hubs.make()
    await book(hubs, local, T0)
    opening = open_stream(local, [BOOK, TRADES], None)
    sink = Recorder()
    local.attach(opening.stream, sink, b"")
    local.apply(TRADES, TradeWindow((Trade("1.00", "0.1", "buy", T0),)), T0)
    if isinstance(local.log, RedisLog):
        assert sink.seqs() == [] and local.position() == "ep-1"
        assert [e.seq for e in open_stream(local, [BOOK], None).backlog] == [1]
    await hubs.settle(local)
    assert sink.seqs() == [2] and local.position() == "ep-2"


async def test_waiting_for_first_data(hubs: Hubs) -> None:
    local = await hubs.make()
    assert not await local.wait_for_data(BOOK, 0.05)
    waiting = asyncio.ensure_future(local.wait_for_data(BOOK, 5))
    await asyncio.sleep(0)
    await book(hubs, local, T0)
    assert await waiting
    assert await local.wait_for_data(BOOK, 0)


async def test_a_status_alone_does_not_end_a_wait_for_first_data(hubs: Hubs) -> None:
    """A REST request waiting for a channel's first push is not answered early
    by its status changing (the private link coming up, a link failing)."""
    local = await hubs.make()
    waiting = asyncio.ensure_future(local.wait_for_data(BOOK, 5))
    await asyncio.sleep(0)
    local.emit_status(BOOK, {"channel": BOOK.name, "status": "live", "reason": None, "ts": T0}, T0)
    await hubs.settle(local)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await book(hubs, local, T0)
    assert await asyncio.wait_for(waiting, 5)


async def test_a_follower_waits_for_a_cursor_of_a_replica_that_is_ahead(
    cluster_hubs: Hubs,
) -> None:
    """A cursor from the leader that this follower has not read yet is not a
    reason to reset: it is waited for, then resumed from, with the leader's
    events, ids and bytes."""
    made = cluster_hubs
    assert made.redis is not None
    redis = made.redis
    leader = await made.make()
    follower_log = RedisLog(Store, lambda: RecentEvents(100, 600_000), checkpoint_s=3600)
    follower = Hub(follower_log, Streams(100, 100), send_timeout_s=10)
    name = made.clusters[0].keys["epoch"].removesuffix(":epoch")
    reader = RedisCluster(redis, name, "b")
    await follower_log.sync(reader)
    await trades(made, leader, T0)
    follower_log.follow(await reader.after(follower_log.applied))
    cursor = follower.position()
    await trades(made, leader, T0, T0 + 1, T0 + 2)
    ahead = leader.position()
    assert follower.behind(ahead) and not leader.behind(ahead)
    waiting = asyncio.ensure_future(follower.reach(ahead, 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    follower_log.follow(await reader.after(follower_log.applied))
    await asyncio.wait_for(waiting, 1)
    opening = open_stream(follower, [TRADES], ahead)
    assert not opening.reset and opening.backlog == []
    resumed = open_stream(follower, [TRADES], cursor)
    assert isinstance(leader.log, RedisLog)
    expected = [(e.id, e.data) for e in leader.log.replay.events if e.seq > 1]
    assert [(e.id, e.data) for e in resumed.backlog] == expected
    # Not read at all within the wait: the stream is told to reset, never left short.
    await trades(made, leader, T0, T0 + 1, T0 + 2, T0 + 3)
    await follower.reach(leader.position(), 0.05)
    assert open_stream(follower, [TRADES], leader.position()).reset


async def test_the_state_view_reads_answers_and_says_why_there_is_none() -> None:
    gateway = Gateway(load_settings())
    view = gateway.ports.view
    assert view.read(BOOK) is None  # nothing yet
    status, _reason = view.status(BOOK)
    assert status == "connecting"
    assert not await view.wait_for_data(BOOK, 0.01)
    await book(Hubs(None), gateway.hub, T0)
    reading = view.read(BOOK)
    assert reading is not None
    body = json.loads(reading.snapshot())
    assert body["channel"] == BOOK.name and body["stale"] is True  # the clock says 2018: long stale
    assert reading.etag.endswith('-1"') and reading.etag.startswith('"')
    assert gateway.membership.leads  # one process: it holds the upstream


# --- book diffs ----------------------------------------------------------------


def _levels(base: int, sizes: list[int], sign: int) -> list[list[str]]:
    return [[f"{base + sign * n}.00", f"{size}.0000"] for n, size in enumerate(sizes) if size]


async def push_book(hubs: Hubs, local: Hub, step: int) -> dict[str, object]:
    """Book number ``step`` of a walk in which a level or two changes each time."""
    bids = _levels(6600, [(n * 7 + step * (n % 8 == step % 8)) % 9 + 1 for n in range(15)], -1)
    asks = _levels(6601, [(n * 5 + step * (n % 8 == step % 8)) % 7 + 1 for n in range(15)], 1)
    local.apply(BOOK, OrderBook("0.01", bids, asks, T0 + step), T0 + step)
    await hubs.settle(local)
    return {"step": "0.01", "bids": bids, "asks": asks}


def rebuilt(sink: Recorder) -> tuple[dict[int, object], list[str]]:
    """The books a diff-mode client rebuilds from what it was written, by the
    channel's seq (each checked against its checksum), and the event names."""
    held: dict[str, object] | None = None
    seq = 0
    books_by_seq: dict[int, object] = {}
    names = []
    for written in sink.events():
        body = json.loads(written["data"])
        names.append(written["name"])
        if written["name"] == "orderbook":
            held, seq = body["data"], body["seq"]
        elif written["name"] == "orderbook_diff":
            assert held is not None and body["prev_seq"] == seq
            held, seq = books.apply(held, body["data"]), body["seq"]  # type: ignore[arg-type]
            assert books.checksum(held["bids"], held["asks"]) == body["checksum"]  # type: ignore[index]
        else:
            continue
        books_by_seq[seq] = held
    return books_by_seq, names


async def test_a_diff_mode_stream_rebuilds_every_book(hubs: Hubs) -> None:
    local = await hubs.make()
    expected = {1: await push_book(hubs, local, 1)}
    opening = local.open("address:a", [BOOK, TRADES], None, 10, diffs=True)
    assert [e.name for e in opening.backlog] == ["orderbook"]
    sink = Recorder()
    local.attach(opening.stream, sink, b"".join(e.wire(line_form) for e in opening.backlog))
    full = follow(local, BOOK)  # the default stays whole books
    for step in range(2, 8):
        expected[step] = await push_book(hubs, local, step)
    got, names = rebuilt(sink)
    assert got == expected
    assert names == ["orderbook"] + ["orderbook_diff"] * 6
    assert {e["name"] for e in full.events()} == {"orderbook"}
    # Diffs are smaller than the whole events they stand for.
    assert len(sink.data) < len(full.data)


async def test_a_paused_diff_stream_gets_one_diff_for_what_it_missed(hubs: Hubs) -> None:
    local = await hubs.make()
    expected = {1: await push_book(hubs, local, 1)}
    opening = local.open("address:a", [BOOK], None, 10, diffs=True)
    sink = Recorder()
    local.attach(opening.stream, sink, b"".join(e.wire(line_form) for e in opening.backlog))
    opening.stream.pause()
    for step in range(2, 6):
        expected[step] = await push_book(hubs, local, step)
    opening.stream.resume()
    got, names = rebuilt(sink)
    assert names == ["orderbook", "orderbook_diff"] and got == {1: expected[1], 5: expected[5]}
    expected[6] = await push_book(hubs, local, 6)
    assert rebuilt(sink)[0][6] == expected[6]


async def test_paused_diff_streams_that_held_the_same_book_share_one_merged_diff(
    hubs: Hubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    merges = []
    merge = books.merge
    monkeypatch.setattr(books, "merge", lambda *a: merges.append(1) or merge(*a))
    local = await hubs.make()
    expected = {1: await push_book(hubs, local, 1)}
    sinks = []
    for address in ("a", "b", "c"):
        opening = local.open(f"address:{address}", [BOOK], None, 10, diffs=True)
        sink = Recorder()
        local.attach(opening.stream, sink, b"".join(e.wire(line_form) for e in opening.backlog))
        sinks.append((opening.stream, sink))
    sinks[0][0].pause()
    sinks[1][0].pause()
    expected[2] = await push_book(hubs, local, 2)
    sinks[2][0].pause()  # holds book 2 from here
    for step in range(3, 6):
        expected[step] = await push_book(hubs, local, step)
    for stream, _sink in sinks:
        stream.resume()
    (_, a), (_, b), (_, c) = sinks
    last = [sink.events()[-1] for sink in (a, b, c)]
    assert [event["name"] for event in last] == ["orderbook_diff"] * 3
    assert last[0]["data"] == last[1]["data"]
    assert len(merges) == 3 + 2  # books 2..5 merged once for a and b (from 1), 3..5 for c (from 2)
    assert json.loads(last[0]["data"])["prev_seq"] == 1 and json.loads(last[2]["data"])["prev_seq"] == 2
    for sink in (a, b, c):
        assert rebuilt(sink)[0][5] == expected[5]


async def test_resuming_in_diff_mode_replays_every_diff_or_sends_the_whole_book(hubs: Hubs) -> None:
    local = await hubs.make()
    expected = {1: await push_book(hubs, local, 1)}
    position = local.position()
    for step in range(2, 5):
        expected[step] = await push_book(hubs, local, step)
    opening = local.open("address:a", [BOOK], position, 10, diffs=True)
    assert [e.name for e in opening.backlog] == ["orderbook_diff"] * 3
    sink = Recorder()
    sink.write(
        json.dumps(
            {"seq": 1, "name": "orderbook", "data": json.dumps({"seq": 1, "data": expected[1]})}
        ).encode()
        + b"\n"
    )
    local.attach(opening.stream, sink, b"".join(e.wire(line_form) for e in opening.backlog))
    assert rebuilt(sink)[0] == expected
    # A client that could not prove its copy asks for it again: the whole book.
    again = local.open("address:a", [BOOK], position, 10, diffs=True, resync=frozenset({BOOK.name}))
    assert [e.name for e in again.backlog] == ["orderbook"]
    # Past the replay buffer: a reset, and the whole book.
    short = await hubs.make(replay=2)
    await push_book(hubs, short, 1)
    mark = short.position()
    for step in range(2, 6):
        await push_book(hubs, short, step)
    late = short.open("address:a", [BOOK], mark, 10, diffs=True)
    assert [e.name for e in late.backlog] == ["orderbook"]


async def test_resync_sends_the_whole_book_though_nothing_came_since_the_id(hubs: Hubs) -> None:
    local = await hubs.make()
    await push_book(hubs, local, 1)
    await trades(hubs, local, T0)
    position = local.position()  # no book after it
    opening = local.open("address:a", [BOOK, TRADES], position, 10, diffs=True, resync=frozenset({BOOK.name}))
    assert [e.name for e in opening.backlog] == ["orderbook"] and opening.backlog[0].id == position


async def test_subscribing_a_book_again_in_the_other_mode_switches_it(hubs: Hubs) -> None:
    local = await hubs.make()
    await push_book(hubs, local, 1)
    opening = local.open("address:a", [BOOK], None, 10)
    sink = Recorder()
    local.attach(opening.stream, sink, b"")
    local.extend(opening.stream, [BOOK], None, diffs=True)  # already followed: now as diffs
    for step in (2, 3):
        await push_book(hubs, local, step)
    local.extend(opening.stream, [BOOK], None, diffs=False)  # and whole again
    await push_book(hubs, local, 4)
    assert [e["name"] for e in sink.events()] == ["orderbook", "orderbook_diff", "orderbook"]
