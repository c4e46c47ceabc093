"""The cluster's shared parts (app/cluster/redislog.py) against a real redis-server,
started here on a free port with a config of its own (no persistence)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.cluster.redislog import Fenced, Lease, RedisCluster
from tests.support import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis(port=redis_server.port)
    try:
        yield redis
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):  # closing may wait on a socket (redis-py #3941)
                await redis.aclose()


async def test_the_epoch_is_the_datas_not_a_processs(client: Redis) -> None:
    first, second = RedisCluster(client, "c", "a"), RedisCluster(client, "c", "b")
    epoch = await first.epoch()
    assert await second.epoch() == epoch  # every replica, every restart
    assert await RedisCluster(client, "other", "a").epoch() != epoch  # clusters apart by prefix
    await client.flushall()  # Redis lost its data: a new epoch, so cursors of the old one reset
    assert await first.epoch() != epoch


async def test_one_leader_at_a_time_with_a_term_that_grows_at_every_change(client: Redis) -> None:
    a, b = RedisCluster(client, "c", "a"), RedisCluster(client, "c", "b")
    term = await a.lead(ttl_ms=300)
    assert term == 1 and await b.lead(ttl_ms=300) is None
    assert await a.lead(ttl_ms=300) == term  # renewed, same term
    assert await a.leader() == "a"
    await asyncio.sleep(0.4)  # a stopped renewing: its lease ran out
    assert await b.lead(ttl_ms=300) == 2
    assert await a.lead(ttl_ms=300) is None
    await b.resign()
    restarted = RedisCluster(client, "c", "b")  # the same node id, another process
    assert await restarted.lead(ttl_ms=300) == 3


async def test_an_old_leader_can_never_write_after_a_new_one_took_over(client: Redis) -> None:
    a, b = RedisCluster(client, "c", "a"), RedisCluster(client, "c", "b")
    old = await a.lead(ttl_ms=200)
    assert old is not None
    first = await a.append(old, await a.epoch(), b"one", maxlen=100)
    await asyncio.sleep(0.3)  # a is paused past its lease
    new = await b.lead(ttl_ms=200)
    assert new is not None and new > old
    with pytest.raises(Fenced):
        await a.append(old, await a.epoch(), b"from the old leader", maxlen=100)
    await b.append(new, await b.epoch(), b"two", maxlen=100)
    entries = await b.after("0-0")
    assert [data for _, data in entries] == [b"one", b"two"]
    assert entries[0][0] == first


async def test_reading_after_a_position_and_knowing_when_it_is_gone(client: Redis) -> None:
    cluster = RedisCluster(client, "c", "a")
    term = await cluster.lead(ttl_ms=5000)
    assert term is not None
    epoch = await cluster.epoch()
    ids = [await cluster.append(term, epoch, b"%d" % n, maxlen=1_000_000) for n in range(5)]
    assert [data for _, data in await cluster.after(ids[1])] == [b"2", b"3", b"4"]
    assert await cluster.after(ids[-1]) == [] and await cluster.newest() == ids[-1]
    await client.xtrim(cluster.keys["log"], maxlen=2, approximate=False)  # trimmed past the position
    assert not await cluster.held(ids[1])  # a replica there starts again: never a hole
    assert await cluster.held(ids[3]) and [data for _, data in await cluster.after(ids[3])] == [b"4"]


async def test_demand_is_the_clusters_and_idle_channels_are_forgotten(client: Redis) -> None:
    a, b = RedisCluster(client, "c", "a"), RedisCluster(client, "c", "b")
    await a.demand(["orderbook:BTC_USD:0.01", "trades:BTC_USD"], now_ms=1_000)
    await b.demand(["trades:BTC_USD", "depth:ETH_USD"], now_ms=5_000)
    await a.demand(["trades:BTC_USD"], now_ms=2_000)  # an older time never moves a channel back
    assert await a.wanted(now_ms=6_000, idle_ms=10_000) == ["depth:ETH_USD", "orderbook:BTC_USD:0.01",
                                                           "trades:BTC_USD"]
    # Nobody has wanted the book for the idle time: the leader releases it.
    assert await b.wanted(now_ms=12_000, idle_ms=8_000) == ["depth:ETH_USD", "trades:BTC_USD"]
    assert await b.wanted(now_ms=12_000, idle_ms=100_000) == ["depth:ETH_USD", "trades:BTC_USD"]  # forgotten


async def test_the_nodes_and_their_roles(client: Redis) -> None:
    a, b = RedisCluster(client, "c", "a"), RedisCluster(client, "c", "b")
    await a.seen("leader", now_ms=10_000)
    await b.seen("follower", now_ms=10_500)
    assert await a.nodes(now_ms=11_000, forget_ms=5_000) == [
        {"node": "a", "role": "leader", "last_seen_ms": 10_000},
        {"node": "b", "role": "follower", "last_seen_ms": 10_500},
    ]
    await b.seen("leader", now_ms=16_000)  # a went silent; b took over
    assert await b.nodes(now_ms=16_000, forget_ms=5_000) == [{"node": "b", "role": "leader", "last_seen_ms": 16_000}]


async def test_exactly_one_replica_leads_and_a_leader_that_loses_the_lease_stops_at_once(client: Redis) -> None:
    events: list[str] = []
    # A lease of 2 s, renewed every 0.3 s here: a loaded machine has time to spare.
    a = Lease(RedisCluster(client, "c", "a"), ttl_ms=2000,
                        on_gained=lambda t: events.append(f"a leads {t}"), on_lost=lambda: events.append("a lost"))
    b = Lease(RedisCluster(client, "c", "b"), ttl_ms=2000,
                        on_gained=lambda t: events.append(f"b leads {t}"), on_lost=lambda: events.append("b lost"))
    await a.step()
    await b.step()
    assert a.held and not b.held and events == ["a leads 1"]
    for _ in range(3):  # renewed well inside the time to live: still the leader, same term
        await asyncio.sleep(0.3)
        await a.step()
        await b.step()
    assert a.term == 1 and not b.held
    await asyncio.sleep(2.1)  # a pauses past its lease (a stop-the-world, a partition)
    await b.step()
    assert b.term == 2
    await a.step()  # its next renewal fails: it stops leading, and says so
    assert not a.held and events == ["a leads 1", "b leads 2", "a lost"]
    await client.execute_command("CLIENT", "PAUSE", 1500)  # every client of Redis stalls
    await b.step()  # Redis paused longer than the renewal may take: b cannot know it still leads
    assert not b.held and events[-1] == "b lost"
    await b.stop()
    await a.stop()


async def test_the_log_is_trimmed_by_age_too(client: Redis) -> None:
    cluster = RedisCluster(client, "c", "a")
    term = await cluster.lead(ttl_ms=5000)
    assert term is not None
    epoch = await cluster.epoch()
    await cluster.append_many(term, epoch, [b"old %d" % n for n in range(250)], maxlen=1_000_000)
    await asyncio.sleep(0.2)
    newest = await cluster.append(term, epoch, b"new", maxlen=1_000_000, max_age_ms=100)
    left = await client.xlen(cluster.keys["log"])
    assert left < 251 and await cluster.held(newest)  # whole old nodes went (trimming is approximate)


async def test_a_leader_that_gives_up_leads_again_only_with_a_new_term(client: Redis) -> None:
    """A leader whose write failed drops the lease: whoever leads next (itself
    included) takes a new term, which fences anything still on its way."""
    events: list[str] = []
    leader = Lease(RedisCluster(client, "c", "a"), 3000,
                             on_gained=lambda t: events.append(f"leads {t}"), on_lost=lambda: events.append("lost"))
    await leader.step()
    assert leader.term == 1
    leader.drop()
    assert not leader.held and events == ["leads 1", "lost"]
    await leader.step()  # gives the lease up
    assert await leader.cluster.leader() is None and not leader.held
    await leader.step()
    assert leader.term == 2 and events[-1] == "leads 2"
