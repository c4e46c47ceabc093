"""A replica of a cluster that shares one Redis (``GATEWAY_REDIS_URL``).

Theory of operation. Every replica keeps the same parts as the single process
(a store, an event log of its own, a fan-out: :class:`app.streams.hub.Hub`), and
the cluster's log in Redis keeps them the same on every replica
(:mod:`app.cluster.entries`):

- **The leader** (one at a time, by the lease of :class:`Lease`)
  holds the upstream links. Its ingest changes its store at once, as in the
  single process, and queues each change as an entry. The writer appends the
  entries in order, each fenced by the leader's term and the cluster's epoch in
  the script that writes it, and only then hands their events to this
  replica's clients: a client never sees an event the log does not hold. Every
  few seconds a checkpoint of the whole store follows an entry.
- **A follower** reads the log on a connection of its own (``XREAD BLOCK``)
  and applies each entry to its store with the leader's code, so its REST
  answers are the leader's, and hands the entry's events (the leader's bytes
  and ids) to its clients. A cursor of any replica resumes on any other.
- **Starting, or losing track** (a write refused, Redis lost data): the
  replica loads the newest checkpoint and the whole log, applies the entries
  after the checkpoint, and puts every event the log holds in its own event
  log, so that a client resumes here from any id the cluster still holds.
- **Taking over**: the new leader first reads the log to its end (the old
  leader's term is over: nothing more can be appended by it), so its trade
  windows, order states and seen deal numbers are the last ones published;
  only then does it open the upstream links.
- **Epoch**: the cluster's data's, kept in Redis. If Redis loses it (restarted
  empty, flushed), or loses the newest entries (a failover to a replica that
  had not received them: this replica's last entry is gone), a new epoch is
  made; every replica starts again empty and its streams are closed with word
  to resume, which their clients do and are told to reset.
- **Redis faults**: the replicas keep serving what they hold, their channels
  turn stale, they are not ready, streams stay open; the leader whose lease
  cannot be renewed closes its links. When Redis is back everything goes on
  from where it was, with no reset if Redis kept its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.connect import RedisTarget
from app.cluster.entries import Entry, apply_entry, checkpoint, entry, read_checkpoint, restore
from app.cluster.redislog import Fenced, Lease, RedisCluster
from app.domain.channels import Channel, parse_channel
from app.domain.errors import ClusterUnavailable, GatewayError, TooMany
from app.ports import ClusterCounts
from app.roles import UNREACHABLE, Following
from app.state.events import Event
from app.state.store import Store
from app.streams.eventlog import Change, Outlet, RecentEvents
from app.streams.hub import Hub

log = logging.getLogger("coinsuper_gateway.cluster")

_BATCH = 256  # entries appended in one round trip
_READ_BLOCK_MS = 1000
_NODE_FORGET_MS = 30_000  # a replica not seen for this long leaves /v1/cluster


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisLog:
    """The :class:`~app.streams.eventlog.EventLog` of a replica: its store and its own
    event log, kept the same on every replica by the cluster's log in Redis.
    A leader's changes wait in the outbox until the writer has appended them;
    only then are their events handed out. A follower applies what it reads."""

    shared = True  # a cursor of another replica may be ahead of this one

    def __init__(
        self,
        make_store: Callable[[str], Store],
        make_replay: Callable[[], RecentEvents],
        *,
        checkpoint_s: float,
    ) -> None:
        self.make_store = make_store
        self.make_replay = make_replay
        self.checkpoint_s = checkpoint_s
        self._store = make_store("")
        self.replay = make_replay()
        self._outlet: Outlet | None = None
        self.applied = "0-0"  # the log entry the store stands after
        self.synced = False  # the store follows the log (loaded since start or since lost)
        self.writing: int | None = None  # the term this replica appends with
        # Changes made and not yet written: (entry, its events) or (None, a checkpoint).
        self.outbox: deque[tuple[bytes | None, list[Event] | bytes]] = deque()
        self.wake = asyncio.Event()
        self.written = asyncio.Event()  # set when the outbox is empty and nothing is in flight
        self.written.set()
        self.on_refused: Callable[[], None] = lambda: None
        self.refused_writes = 0
        self.dropped_changes = 0
        self._appending = False
        # The newest snapshot event handed out, per channel.
        self._snapshots: dict[str, Event] = {}
        self._last_checkpoint = 0.0

    @property
    def store(self) -> Store:
        return self._store

    @property
    def epoch(self) -> str:
        return self._store.epoch

    def bind(self, outlet: Outlet) -> None:
        self._outlet = outlet

    @property
    def outlet(self) -> Outlet:
        assert self._outlet is not None, "the log is bound to its hub first"
        return self._outlet

    # --- the leader's ingest: the store is changed, the entry queued ----------

    def writable(self) -> bool:
        if self.writing is None:
            # A message that was in flight when the lease was lost: it is the
            # new leader's to take.
            self.dropped_changes += 1
            return False
        return True

    def record(self, change: Change, events: list[Event]) -> None:
        self.outbox.append((entry(change, self._store, events).encode(), events))
        now = time.monotonic()
        if now - self._last_checkpoint >= self.checkpoint_s:
            self._last_checkpoint = now
            self.outbox.append((None, checkpoint(self._store)))
        self.written.clear()
        self.wake.set()

    # --- writing (the leader) -------------------------------------------------

    async def write_loop(self, cluster: RedisCluster, maxlen: int, max_age_ms: int = 0) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox and self.writing is not None:
                await self._write_some(cluster, self.writing, maxlen, max_age_ms)

    async def _write_some(
        self, cluster: RedisCluster, term: int, maxlen: int, max_age_ms: int
    ) -> None:
        batch = [self.outbox.popleft() for _ in range(min(_BATCH, len(self.outbox)))]
        entries = [data for data, _ in batch if data is not None]
        self._appending = True  # until the batch is out, checkpoints included
        try:
            try:
                ids = await cluster.append_many(term, self.epoch, entries, maxlen, max_age_ms)
            except Fenced as refused:
                self.refused(f"an append was refused ({refused})")
                return
            except (RedisError, OSError) as error:
                self.refused(f"an append failed ({type(error).__name__}: {error})")
                return
            if self.writing != term:
                return  # lost meanwhile: the store is reloaded from the log
            written = iter(ids)
            for data, made in batch:
                if data is not None:
                    self.applied = next(written)
                    assert isinstance(made, list)
                    self._hand_out(made)
                else:
                    assert isinstance(made, bytes)
                    with contextlib.suppress(RedisError, OSError):
                        await cluster.save_checkpoint(term, self.applied, made)
        finally:
            self._appending = False
            if not self.outbox:
                self.written.set()

    def refused(self, why: str) -> None:
        """The log may not hold what this store does: stop writing and reload."""
        self.refused_writes += 1
        log.warning("stopped leading: %s", why)
        self.stop_writing()
        self.synced = False
        self.on_refused()

    def stop_writing(self) -> None:
        if self.writing is not None:
            self.writing = None
            if self.outbox or self._appending:
                # Changes the store made that the log may not hold: it is reloaded.
                self.synced = False
        self.outbox.clear()
        if not self._appending:
            self.written.set()  # else when the batch in flight is out

    def _hand_out(self, events: list[Event]) -> None:
        snapshots = self._snapshots
        for event in events:
            self.replay.append(event)
            if event.conflatable and event.name != "status":
                held = snapshots.get(event.channel)
                if held is None or held.seq < event.seq:
                    snapshots[event.channel] = event
        outlet = self.outlet
        outlet.hand_out(events)
        for event in events:
            outlet.arrived(event.channel)

    # --- what streams are given: only what the log holds ----------------------
    # (On the leader the store runs ahead of the log: its changes wait to be
    # written.)

    def since(
        self, seq: int, channels: frozenset[str], books: frozenset[str] = frozenset()
    ) -> list[Event] | None:
        return self.replay.since(seq, channels, books)

    def latest(self, channels: Iterable[str]) -> list[Event]:
        """The newest snapshot handed out of each channel the store holds."""
        held = self._store.channels
        snapshots = self._snapshots
        events = [snapshots[n] for n in channels if n in held and n in snapshots]
        events.sort(key=lambda event: event.seq)
        return events

    # --- following (every replica that does not lead) -------------------------

    def follow(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """Apply entries read from the log after this store's position."""
        for entry_id, data in entries:
            if _id(entry_id) <= _id(self.applied):
                continue  # read already (a read that raced a take-over's)
            item = Entry.decode(data)
            applied = apply_entry(self._store, item)
            self.applied = entry_id
            self._hand_out(item.made(self.epoch, applied))

    async def sync(self, cluster: RedisCluster) -> None:
        """Load the store from the newest checkpoint and the whole log."""
        epoch = await cluster.epoch()
        store = self.make_store(epoch)
        position = "0-0"
        saved = await cluster.load_checkpoint()
        if saved is not None:
            point = read_checkpoint(saved[1], saved[0])
            if point.epoch == epoch:
                restore(store, point)
                position = point.position
        entries: list[tuple[str, bytes]] = []
        while True:
            batch = await cluster.after(entries[-1][0] if entries else "0-0")
            if not batch:
                break
            entries.extend(batch)
        if position != "0-0" and (not entries or _id(entries[0][0]) > _id(position)):
            log.warning("the log no longer reaches back to its checkpoint: some changes are lost")
        replay = self.make_replay()
        newest = position
        for entry_id, data in entries:
            item = Entry.decode(data)
            applied = None
            if _id(entry_id) > _id(position):
                applied = apply_entry(store, item)
                newest = entry_id
            for event in item.made(epoch, applied):
                replay.append(event)
        self._swap(store, replay, newest)

    def _swap(self, store: Store, replay: RecentEvents, position: str) -> None:
        new_epoch = store.epoch != self._store.epoch
        self._store = store
        self.replay = replay
        self.applied = position
        self.synced = True
        self._snapshots = {
            name: state.last_event
            for name, state in store.channels.items()
            if state.last_event is not None
        }
        if new_epoch:
            told = self.outlet.restart(store.seq)
            if told:
                log.warning(
                    "the cluster's data is of a new epoch (%s): %d streams told to resume",
                    store.epoch,
                    told,
                )
        else:
            self.outlet.hand_out(replay.events)
        for name, state in store.channels.items():
            if state.has_data:
                self.outlet.arrived(name)


class Replica:
    """A replica's part in the cluster: its lease, its reading of the log, the
    demand of its clients, and its presence (for ``/v1/cluster``)."""

    def __init__(
        self,
        log: RedisLog,
        hub: Hub,
        target: RedisTarget,
        *,
        cluster: str,
        node: str,
        ttl_ms: int,
        log_entries: int,
        log_age_ms: int,
        idle_ms: int,
        on_lead: Callable[[], None],
        on_follow: Callable[[], Coroutine[Any, Any, None]],
        on_wanted: Callable[[list[str]], None],
        pinned: frozenset[str] = frozenset(),
        min_replicas: int = 0,
        wait_ms: int = 200,
    ) -> None:
        self.log = log
        self.target = target
        self.hub = hub
        self.node = node
        self.log_entries = max(log_entries, 1000)
        # Never shorter than a few checkpoints: a late replica starts from one.
        floor = max(60_000, int(3 * log.checkpoint_s * 1000))
        self.log_age_ms = max(log_age_ms, floor) if log_age_ms else 0
        self.idle_ms = idle_ms
        self.on_lead = on_lead
        self.on_follow = on_follow
        self.on_wanted = on_wanted
        timeout = max(ttl_ms / 1000, 1.0)
        self.client: Redis = target.client(timeout, timeout)
        # The blocking reads get a connection of their own, with a timeout
        # longer than the block.
        read = target.reader if min_replicas else target.client
        self.reader: Redis = read(_READ_BLOCK_MS / 1000 + timeout, timeout)
        self.cluster = RedisCluster(
            self.client, cluster, node, min_replicas=min_replicas, wait_ms=wait_ms
        )
        self.lease = Lease(self.cluster, ttl_ms, on_gained=self._gained, on_lost=self._lost)
        log.on_refused = self.lease.drop
        self.reachable = False
        # The role of this replica while it does not lead, and the statuses
        # it tells its streams when Redis goes and comes back.
        self.following = Following(hub, pinned, lambda: self.connected)
        self.local_demand: dict[str, int] = {}
        self.wanted: list[str] = []
        self.term = 0  # the fencing term, as housekeeping last read it
        self._lock = asyncio.Lock()
        self._taking_over = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def leads(self) -> bool:
        """Whether this replica holds the upstream links (and writes the log)."""
        return self.log.writing is not None

    @property
    def role(self) -> str:
        return "leader" if self.leads else "follower"

    async def start(self) -> None:
        """Load the store from Redis (if Redis can be reached now: else the
        reading loop does when it can), then follow, and stand for leader."""
        try:
            async with self._lock:
                await self.log.sync(self.cluster)
            self._reach(True)
        except (RedisError, OSError) as error:
            self._reach(False, error)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="cluster log"),
            asyncio.create_task(
                self.log.write_loop(self.cluster, self.log_entries, self.log_age_ms),
                name="cluster writer",
            ),
            asyncio.create_task(self._housekeeping(), name="cluster housekeeping"),
        ]
        self.lease.start()

    async def stop(self) -> None:
        await self.lease.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.cluster.seen("gone", 0)
        for client in (self.client, self.reader):
            # Bounded: closing can wait on a socket that never finishes
            # closing (redis-py #3941), and a stop must not hang on it.
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await client.aclose()

    # --- leadership -----------------------------------------------------------

    def _gained(self, term: int) -> None:
        self._taking_over = True
        task = asyncio.create_task(self._take_over(term), name="take-over")
        self._tasks.append(task)

    async def _take_over(self, term: int) -> None:
        """Read the log to its end, then write: the old leader's term is over."""
        try:
            async with self._lock:
                await self._check_epoch()  # the data it follows on may be gone
                if not self.log.synced:
                    await self.log.sync(self.cluster)
                while batch := await self.cluster.after(self.log.applied):
                    self.log.follow(batch)
            if self.lease.term != term:
                return
            self.log.writing = term
            log.info("leading the cluster (term %d) from entry %s", term, self.log.applied)
            self.on_lead()
        except (RedisError, OSError) as error:
            log.warning("could not take over: %s: %s", type(error).__name__, error)
            self.lease.drop()
        finally:
            self._taking_over = False

    def _lost(self) -> None:
        was_leading = self.log.writing is not None
        self.log.stop_writing()
        if was_leading:
            log.warning("no longer leading the cluster: the upstream links close")
        task = asyncio.create_task(self.on_follow(), name="links close")
        self._tasks.append(task)

    # --- following ------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            if self.log.writing is not None or self._taking_over:
                await asyncio.sleep(0.1)
                continue
            try:
                if not self.log.synced:
                    async with self._lock:
                        await self.log.sync(self.cluster)
                entries = await self.cluster.follow(
                    self.reader, self.log.applied, _READ_BLOCK_MS, 1000
                )
                async with self._lock:
                    if self.log.writing is None and self.log.synced:
                        self.log.follow(entries)
                self._reach(True)
            except (RedisError, OSError) as error:
                self._reach(False, error)
                await asyncio.sleep(0.5)
            except Exception:  # a bad entry: reload rather than stop following
                log.exception("could not apply the cluster's log: reloading it")
                self.log.synced = False
                await asyncio.sleep(1.0)

    async def _housekeeping(self) -> None:
        """Twice a second: presence, demand both ways, the epoch's health."""
        while True:
            await asyncio.sleep(0.5)
            now = time.time_ns() // 1_000_000
            demand, self.local_demand = self.local_demand, {}
            try:
                await self.cluster.seen(self.role, now)
                self.term = await self.cluster.current_term()
                await self.cluster.demand(set(demand) | set(self.hub.streamed_channels()), now)
                self.wanted = await self.cluster.wanted(now, self.idle_ms)
                if self.leads:
                    self.on_wanted(self.wanted)
                await self._check_epoch()
                self._reach(True)
            except (RedisError, OSError) as error:
                for name, ts in demand.items():
                    self.local_demand.setdefault(name, ts)
                self._reach(False, error)

    async def _check_epoch(self) -> None:
        """Whether Redis still holds the data this store follows on."""
        held = self.log
        if not held.synced:
            return
        current = await self.cluster.current_epoch()
        if current != held.epoch:
            log.warning("the cluster's Redis lost its data (epoch %s → %s)", held.epoch, current)
        elif held.applied != "0-0" and not await self.cluster.held(held.applied):
            newest = await self.cluster.newest()
            if newest is not None and _id(newest) > _id(held.applied):
                log.warning("fell behind the trimmed log: reloading it")
            else:
                renewed = await self.cluster.renew_epoch(held.epoch)
                log.warning(
                    "the cluster's Redis lost its newest entries (after %s): new epoch %s",
                    held.applied,
                    renewed,
                )
        else:
            return
        if held.writing is not None:
            held.refused("the cluster's data changed under the leader")
        held.synced = False

    def _reach(self, reachable: bool, error: BaseException | None = None) -> None:
        """Redis answers again, or no longer: say so on the streams."""
        if reachable == self.reachable:
            return
        self.reachable = reachable
        now = time.time_ns() // 1_000_000
        if not reachable:
            log.warning("%s: %s: %s", UNREACHABLE, type(error).__name__, error)
        else:
            log.info("the cluster's Redis answers again")
        for name in self.hub.streamed_channels():
            status, reason = self.following.status(parse_channel(name), now)
            self.hub.tell(
                name, {"channel": name, "status": status.value, "reason": reason, "ts": now}
            )

    # --- what the gateway asks ------------------------------------------------

    @property
    def connected(self) -> bool:
        """Redis answers and this replica's store follows the log."""
        return self.reachable and self.log.synced

    def problems(self) -> list[str]:
        """Why this replica is not ready, whatever its channels say."""
        return [] if self.connected else [f"cluster: {UNREACHABLE}"]

    def counts(self) -> ClusterCounts:
        log = self.log
        return ClusterCounts(
            self.connected,
            log.refused_writes,
            log.dropped_changes,
            self.term,
            self.cluster.unreplicated,
        )

    def want(self, channel: Channel, cap: int) -> None:
        """A client of this replica wants ``channel``: the leader subscribes it
        when it reads the demand (twice a second)."""
        name = channel.name
        known = set(self.wanted) | set(self.local_demand)
        if name not in known and len(known) >= cap:
            raise TooMany(
                "upstream subscriptions",
                f"{name} would be subscribed upstream beyond the cluster's cap",
                cap,
            )
        self.local_demand[name] = time.time_ns() // 1_000_000

    async def report(self) -> dict[str, object]:
        """What ``/v1/cluster`` answers (:class:`ClusterUnavailable` when Redis
        does not tell within two seconds)."""
        try:
            async with asyncio.timeout(2.0):
                return await self._report()
        except (TimeoutError, RedisError, OSError):
            raise ClusterUnavailable(
                f"{UNREACHABLE}: this replica ({self.node}) cannot tell the cluster's state"
            ) from None

    async def _report(self) -> dict[str, object]:
        now = time.time_ns() // 1_000_000
        return {
            "node": self.node,
            "role": self.role,
            "leader": await self.cluster.leader(),
            "term": await self.cluster.current_term(),
            "epoch": self.log.epoch,
            "nodes": await self.cluster.nodes(now, _NODE_FORGET_MS),
            "redis": {
                **self.target.describe(),
                "master": await self.target.master(),
                "min_replicas": self.cluster.min_replicas,
            },
        }


class ClusterDemand:
    """The :class:`~app.ports.Demand` of a replica: the leader subscribes
    (with the upstream's caps and checks); a follower passes the demand on."""

    def __init__(self, replica: Replica, demand: Callable[[Channel], object], cap: int) -> None:
        self.replica = replica
        self._demand = demand
        self.cap = cap

    def demand(self, channel: Channel) -> object:
        if self.replica.leads:
            return self._demand(channel)
        self.replica.want(channel, self.cap)
        return None


def follow_wanted(demand: Callable[[Channel], object], names: Iterable[str]) -> None:
    """The leader subscribes what some replica's client wants."""
    for name in names:
        try:
            demand(parse_channel(name))
        except GatewayError:
            continue  # refused (the cap, an unknown symbol): the replica's client is told so
