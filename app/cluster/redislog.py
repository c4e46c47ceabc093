"""The cluster's shared parts in Redis, each one script or command; the
replica that uses them is app/cluster/replica.py. Each part is checked against a real
``redis-server`` by tests/test_redislog.py:

- **The epoch** of the cluster's data: made once (``SET NX``) and kept in Redis,
  so that every replica, and every restart of every replica, shares it. If
  Redis loses its data the key goes with it, the next call makes a new epoch,
  and a client's cursor of the old one is told to reset: never a silent gap.
- **The leader's lease**, ``SET NX PX`` with a **fencing term** that grows at
  every change of holder. The holder is named by node *and* process, so a
  restarted process with the same node id is another holder with a new term.
  Taking, renewing and resigning are each one script: no holder can renew a
  lease another took meanwhile.
- **The event log**, one Redis Stream trimmed by count and by age. Every append
  is checked against the writer's term and the cluster's epoch in the script
  that makes it, so a paused or partitioned old leader can never write after a
  new one took over; and **checkpoints** of the leader's whole state, fenced
  alike.
- Reading the log **after a position**, and knowing whether that position is
  still in it (trimmed, or lost in a failover), so that a replica's copy goes
  on exactly, or starts again, never with a hole.
- **Demand across the cluster**: when each channel was last wanted by a client
  of any replica (a sorted set scored by time, only ever moved forward), so
  that the leader subscribes what any replica's clients want and releases
  what none has wanted for the idle time.
- **The nodes**: each replica's role and when it was last seen, for
  ``/v1/cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

log = logging.getLogger("coinsuper_gateway.cluster")

# KEYS: lease, term. ARGV: holder, ttl_ms. The term held, or 0 if another holds it.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]))
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"""

# KEYS: lease. ARGV: holder. Gives the lease up only if it is still this holder's.
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: term, log, epoch. ARGV: term, maxlen, data, epoch, max_age_ms (0: no
# age limit). The new entry's id, or an error FENCED when the term is no longer
# the cluster's (another process leads) or the epoch is not (the data it
# follows on was lost). The log is trimmed by count and by age (entry ids are
# Redis's milliseconds).
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply("FENCED the term " .. ARGV[1] .. " is not the cluster's")
end
if redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return redis.error_reply("FENCED the epoch " .. ARGV[4] .. " is not the cluster's")
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[3])
local age = tonumber(ARGV[5])
if age > 0 then
  local ms = tonumber(string.match(id, "^(%d+)"))
  redis.call('XTRIM', KEYS[2], 'MINID', '~', ms - age)
end
return id
"""

# KEYS: term, checkpoint. ARGV: term, position, data. 1, or 0 when fenced.
_CHECKPOINT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'position', ARGV[2], 'data', ARGV[3])
return 1
"""

# KEYS: epoch, log, checkpoint. ARGV: the epoch given up, a new one. The
# epoch now (the new one, or another replica's if it was quicker); the old
# epoch's log and checkpoint go with it.
_RENEW_EPOCH = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
return ARGV[2]
"""


class Fenced(Exception):
    """An append by a writer whose term is over: another process leads."""


def _data(fields: Any) -> bytes:
    """An entry's event bytes."""
    data = fields[b"e"]
    assert isinstance(data, bytes)
    return data


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCluster:
    """One process's view of a cluster's shared parts in Redis."""

    def __init__(
        self, client: Redis, cluster: str, node: str, *, min_replicas: int = 0, wait_ms: int = 200
    ) -> None:
        self.client = client
        self.node = node
        # WAIT after each batch and each lease step: that many Redis replicas
        # hold it before it is acted on, or wait_ms have passed (counted).
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        self.unreplicated = 0
        self._unconfirmed = False  # in an episode of WAITs that timed out
        # Node and process: a restarted process is another holder.
        self.holder = f"{node}:{secrets.token_hex(4)}"
        prefix = f"{cluster}:"
        self.keys = {
            "epoch": prefix + "epoch",
            "lease": prefix + "leader",
            "term": prefix + "term",
            "log": prefix + "log",
            "demand": prefix + "demand",
            "nodes": prefix + "nodes",
            "checkpoint": prefix + "checkpoint",
        }
        self._lead = client.register_script(_LEAD)
        self._resign = client.register_script(_RESIGN)
        self._append = client.register_script(_APPEND)
        self._checkpoint = client.register_script(_CHECKPOINT)
        self._renew_epoch = client.register_script(_RENEW_EPOCH)

    async def epoch(self) -> str:
        """The epoch of the cluster's data, made by the first process to ask."""
        await self.client.set(self.keys["epoch"], secrets.token_hex(4), nx=True)
        value = await self.client.get(self.keys["epoch"])
        return _text(value)

    async def current_epoch(self) -> str | None:
        """The epoch as Redis holds it now: None if Redis lost it."""
        value = await self.client.get(self.keys["epoch"])
        return _text(value) if value is not None else None

    async def renew_epoch(self, old: str) -> str:
        """Give up the epoch ``old`` (its newest entries were lost): the
        cluster's data starts again under a new one, which every replica, and
        every client, is told of."""
        value = await self._renew_epoch(
            keys=[self.keys["epoch"], self.keys["log"], self.keys["checkpoint"]],
            args=[old, secrets.token_hex(4)],
        )
        return _text(value)

    async def lead(self, ttl_ms: int) -> int | None:
        """Take or renew the lease for ``ttl_ms``: the fencing term this
        process leads with, or None while another holds it."""
        keys = [self.keys["lease"], self.keys["term"]]
        # The term goes through the same check as the log, so that a replica
        # promoted by a failover never holds an older term than one acted on.
        (result,) = await self._scripted(_LEAD, self._lead.sha, [[2, *keys, self.holder, ttl_ms]])
        if isinstance(result, Exception):
            raise result
        return int(result) or None

    async def _scripted(self, source: str, sha: str, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA once per call, in order, in one round trip (errors returned,
        not raised), then, with ``min_replicas``, a WAIT on the same connection
        for those writes. A Redis that restarted forgot the script: it is
        loaded and the calls sent again. EVALSHA straight away: a script run
        through a pipeline would ask Redis whether it knows the script first, a
        round trip per batch."""
        for attempt in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                for args in calls:
                    pipe.evalsha(sha, *args)
                if self.min_replicas:
                    pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
                results = await pipe.execute(raise_on_error=False)
            acked = results.pop() if self.min_replicas else None
            if attempt == 0 and results and all(isinstance(r, NoScriptError) for r in results):
                await self.client.script_load(source)
                continue
            break
        if acked is not None:
            self._replicated(acked)
        return results

    def _replicated(self, acked: object) -> None:
        """What WAIT answered: fewer replicas than asked is counted, and logged
        once per episode (the batch goes out all the same)."""
        if isinstance(acked, Exception):
            raise acked
        if int(acked) >= self.min_replicas:  # type: ignore[call-overload]
            if self._unconfirmed:
                log.info("Redis replicas confirm the cluster's writes again")
                self._unconfirmed = False
            return
        self.unreplicated += 1
        if not self._unconfirmed:
            log.warning(
                "%s of %d Redis replicas confirmed a write within %d ms (GATEWAY_REDIS_WAIT_MS): "
                "writes go on unconfirmed, counted, until they confirm again",
                acked,
                self.min_replicas,
                self.wait_ms,
            )
            self._unconfirmed = True

    async def leader(self) -> str | None:
        """The node that holds the lease, if any."""
        holder = await self.client.get(self.keys["lease"])
        return _text(holder).rsplit(":", 1)[0] if holder is not None else None

    async def current_term(self) -> int:
        """The cluster's fencing term now (0 before any leader)."""
        value = await self.client.get(self.keys["term"])
        return int(value) if value is not None else 0

    async def resign(self) -> None:
        await self._resign(keys=[self.keys["lease"]], args=[self.holder])

    async def append(
        self, term: int, epoch: str, data: bytes, maxlen: int, max_age_ms: int = 0
    ) -> str:
        """Append to the event log as the leader of ``term``: the entry's id.
        Raises :class:`Fenced` when another process has led since."""
        ids = await self.append_many(term, epoch, [data], maxlen, max_age_ms)
        return ids[0]

    async def append_many(
        self, term: int, epoch: str, entries: list[bytes], maxlen: int, max_age_ms: int = 0
    ) -> list[str]:
        """Append entries in order, in one round trip, each fenced by the
        script that writes it: their ids. Raises :class:`Fenced` (after the
        ones before it were written) when an append is refused."""
        keys = [self.keys["term"], self.keys["log"], self.keys["epoch"]]
        calls = [[3, *keys, term, maxlen, data, epoch, max_age_ms] for data in entries]
        results = await self._scripted(_APPEND, self._append.sha, calls)
        ids = []
        for result in results:
            if isinstance(result, ResponseError):
                if str(result).startswith("FENCED"):
                    raise Fenced(str(result))
                raise result
            if isinstance(result, Exception):
                raise result
            ids.append(_text(result))
        return ids

    async def save_checkpoint(self, term: int, position: str, data: bytes) -> bool:
        """Keep the store as it stands after entry ``position`` (fenced like
        an append): False when the term is over."""
        saved = await self._checkpoint(
            keys=[self.keys["term"], self.keys["checkpoint"]], args=[term, position, data]
        )
        return bool(saved)

    async def load_checkpoint(self) -> tuple[str, bytes] | None:
        """The newest checkpoint: its log position and its data."""
        fields: Any = await self.client.hgetall(self.keys["checkpoint"])
        if b"position" not in fields or b"data" not in fields:
            return None
        return _text(fields[b"position"]), _data({b"e": fields[b"data"]})

    async def held(self, position: str) -> bool:
        """Whether the log still holds the entry ``position``."""
        log = self.keys["log"]
        return bool(await self.client.xrange(log, min=position, max=position, count=1))

    async def newest(self) -> str | None:
        """The id of the log's newest entry, if it holds any."""
        entries = await self.client.xrevrange(self.keys["log"], max="+", min="-", count=1)
        return _text(entries[0][0]) if entries else None

    async def after(self, position: str, count: int = 10_000) -> list[tuple[str, bytes]]:
        """Up to ``count`` entries after ``position`` ("0-0": from the oldest)."""
        log = self.keys["log"]
        entries = await self.client.xrange(log, min=f"({position}", max="+", count=count)
        return [(_text(entry_id), _data(fields)) for entry_id, fields in entries or []]

    async def follow(
        self, reader: Redis, position: str, block_ms: int, count: int
    ) -> list[tuple[str, bytes]]:
        """Entries after ``position``, waiting up to ``block_ms`` for one, read
        on ``reader``: a connection of its own, since a blocking read that is
        cancelled on a shared connection could leave its reply to the next
        command."""
        answer: Any = await reader.xread({self.keys["log"]: position}, count=count, block=block_ms)
        entries: list[tuple[str, bytes]] = []
        for _stream, items in answer or []:
            entries.extend((_text(entry_id), _data(fields)) for entry_id, fields in items)
        return entries

    async def demand(self, channels: Iterable[str], now_ms: int) -> None:
        """Clients of this replica want ``channels`` now (a time never moves back)."""
        mapping = {name: now_ms for name in channels}
        if mapping:
            await self.client.zadd(self.keys["demand"], mapping, gt=True)

    async def wanted(self, now_ms: int, idle_ms: int) -> list[str]:
        """The channels some replica's client wanted within ``idle_ms``; the
        others are forgotten (the leader releases them)."""
        horizon = now_ms - idle_ms
        await self.client.zremrangebyscore(self.keys["demand"], "-inf", f"({horizon}")
        names = await self.client.zrangebyscore(self.keys["demand"], horizon, "+inf")
        return sorted(_text(name) for name in names)

    async def seen(self, role: str, now_ms: int) -> None:
        """This replica is alive in ``role`` (leader or follower)."""
        await self.client.hset(self.keys["nodes"], self.node, json.dumps([role, now_ms]))

    async def nodes(self, now_ms: int, forget_ms: int) -> list[dict[str, object]]:
        """Every replica seen within ``forget_ms``: node, role, last seen; the
        others are forgotten."""
        table = await self.client.hgetall(self.keys["nodes"])
        nodes = []
        for node, value in table.items():
            role, last_seen = json.loads(value)
            if now_ms - last_seen > forget_ms:
                await self.client.hdel(self.keys["nodes"], node)
                continue
            nodes.append({"node": _text(node), "role": role, "last_seen_ms": last_seen})
        return sorted(nodes, key=lambda item: str(item["node"]))


class Lease:
    """A replica's lease on leading, renewed every third of its time to live.
    Holding it is not yet leading: the replica leads (:attr:`app.cluster.replica.Replica.leads`)
    once it has read the log to its end under the lease's term (``on_gained``).
    When a renewal fails (another holds the lease, or Redis cannot be reached
    before the lease would run out) it is lost at once and says so
    (``on_lost``: the upstream links close). The term fences the holder's
    writes (:meth:`RedisCluster.append`)."""

    def __init__(
        self,
        cluster: RedisCluster,
        ttl_ms: int,
        on_gained: Callable[[int], None] = lambda term: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.cluster = cluster
        self.ttl_ms = ttl_ms
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.term: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._must_resign = False  # dropped: the lease is given up at the next step

    @property
    def held(self) -> bool:
        return self.term is not None

    async def step(self) -> None:
        """One try to take or renew the lease, bounded by the lease's own time."""
        deadline = self.ttl_ms / 3000
        try:
            async with asyncio.timeout(deadline):
                if self._must_resign:
                    # Given up: only a new term may lead again, so that no
                    # append still on its way under the old one can land
                    # after the log was read for taking over.
                    await self.cluster.resign()
                    self._must_resign = False
                    return
                term = await self.cluster.lead(self.ttl_ms)
        except (TimeoutError, RedisError, OSError):
            term = None  # not renewed in time: the lease may be another's by now
        if term is not None and term != self.term:
            if self.term is not None:
                self._lose()
            self.term = term
            self.on_gained(term)
        elif term is None and self.term is not None:
            self._lose()

    def _lose(self) -> None:
        self.term = None
        self.on_lost()

    def drop(self) -> None:
        """Stop leading now (this process's writes were refused, or it lost
        track of the log) and give the lease up: the next step takes a new
        term, by this process or another."""
        if self.term is None:
            return
        self._must_resign = True
        self._lose()

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.ttl_ms / 3000)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="lease")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.term is not None:
            self._lose()
            with contextlib.suppress(RedisError, OSError):
                await self.cluster.resign()
