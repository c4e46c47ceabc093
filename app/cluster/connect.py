"""Where the cluster's Redis is: one server (``GATEWAY_REDIS_URL``), or the
master that Redis Sentinel names (``GATEWAY_REDIS_SENTINELS`` and
``GATEWAY_REDIS_MASTER``).

Each gives clients (redis-py's asyncio ``Redis``) with the timeouts asked
for. Through Sentinel a client's connections ask the Sentinels for the master
whenever they connect, and drop a connection to a master that was demoted
(``READONLY``: redis-py's ``SentinelManagedConnection``), so the blocking
reader, the writer, the lease and the housekeeping all follow a failover by
themselves, at their next command. A follower reads the log from a replica
where there is one, so that it hands out only what a replica holds, as the
leader does after its ``WAIT``. Nothing here logs an address with its
password: :meth:`describe` names hosts and ports only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff


class RedisTarget(Protocol):
    """The cluster's Redis, however it is found."""

    def client(self, socket_timeout: float, connect_timeout: float) -> Redis:
        """A client of the Redis that takes writes (the master)."""
        ...

    def reader(self, socket_timeout: float, connect_timeout: float) -> Redis:
        """A client to follow the log with: where there are Redis replicas, one
        of them, so that a follower hands out only entries a replica holds
        (what the leader waits for before it hands them out itself)."""
        ...

    async def master(self) -> str:
        """``HOST:PORT`` of the Redis followed now (Sentinel: asked afresh)."""
        ...

    def describe(self) -> dict[str, object]:
        """What /v1/cluster says of it, with no secret."""
        ...


@dataclass(frozen=True)
class SingleRedis:
    url: str

    def client(self, socket_timeout: float, connect_timeout: float) -> Redis:
        return Redis.from_url(
            self.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )

    def reader(self, socket_timeout: float, connect_timeout: float) -> Redis:
        return self.client(socket_timeout, connect_timeout)

    async def master(self) -> str:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"

    def describe(self) -> dict[str, object]:
        return {"mode": "single"}


class SentinelRedis:
    """The master of ``name``, as the Sentinels at ``sentinels`` say."""

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        name: str,
        password: str | None,
        timeout: float,
    ) -> None:
        self.sentinels = sentinels
        self.name = name
        # No retry on one sentinel: the next one is asked at once (redis-py's
        # default retries a sentinel that is gone three times, with backoff:
        # seconds before the next is asked).
        options: dict[str, object] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if password:
            options["password"] = password
        self.sentinel = Sentinel(sentinels, sentinel_kwargs=options)  # type: ignore[no-untyped-call]

    def client(self, socket_timeout: float, connect_timeout: float) -> Redis:
        client: Redis = self.sentinel.master_for(
            self.name, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )
        return client

    def reader(self, socket_timeout: float, connect_timeout: float) -> Redis:
        # A replica, the master when none answers (redis-py's slave pool
        # falls back to it).
        client: Redis = self.sentinel.slave_for(
            self.name, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )
        return client

    async def master(self) -> str:
        host, port = await self.sentinel.discover_master(self.name)
        return f"{host}:{port}"

    def describe(self) -> dict[str, object]:
        return {
            "mode": "sentinel",
            "master_name": self.name,
            "sentinels": [f"{host}:{port}" for host, port in self.sentinels],
        }
