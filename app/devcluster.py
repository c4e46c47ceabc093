"""``coinsuper-gateway cluster`` (``make cluster``): a cluster on one machine.

It starts Debian's ``redis-server`` on a free port (its data in a temporary
directory), the simulated exchange, and three replicas of the gateway on ports
8001–8003 (``--base-port``), each a process of its own that shares the Redis.
It prints the URLs, then the leader whenever it changes, with the command that
kills it; Ctrl-C stops everything.

With ``--sentinel`` (``make cluster SENTINEL=1``) the Redis is a master and a
replica watched by three ``redis-sentinel`` processes (quorum 2,
``down-after-milliseconds`` 1000), and the replicas find the master through
them: it prints how to kill the master, then the master whenever it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from app.domain.errors import ConfigError
from app.simulator import Simulator
from app.simulator.broker import BrokerPorts, DemoAccount

CHANNELS = "orderbook:BTC_USD:0.01,trades:BTC_USD,depth:BTC_USD,kline:BTC_USD:1m"
SENTINEL_MASTER = "coinsuper"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Launcher:
    def __init__(self, replicas: int, base_port: int, ttl_ms: int, sentinel: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server is not installed (Debian package redis-server)")
        self.redis_binary = binary
        self.sentinel_binary = shutil.which("redis-sentinel") if sentinel else None
        if sentinel and self.sentinel_binary is None:
            raise ConfigError("redis-sentinel is not installed (Debian package redis-sentinel)")
        self.sentinel = sentinel
        self.redis_replica_port = _free_port()
        self.sentinel_ports = [_free_port() for _ in range(3)] if sentinel else []
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.replicas = replicas
        self.base_port = base_port
        self.ttl_ms = ttl_ms
        self.dir = Path(tempfile.mkdtemp(prefix="coinsuper-cluster-"))
        self.redis_port = _free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.token = os.environ.get("GATEWAY_TOKENS") or "demo-" + secrets.token_urlsafe(12)

    def _spawn_redis(self, port: int, *extra: str) -> subprocess.Popen[bytes]:
        data = self.dir / f"redis-{port}"
        data.mkdir(exist_ok=True)
        return subprocess.Popen(
            [
                self.redis_binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(data),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _spawn_sentinel(self, index: int) -> subprocess.Popen[bytes]:
        assert self.sentinel_binary is not None
        config = self.dir / f"sentinel-{index}.conf"
        config.write_text(
            f"port {self.sentinel_ports[index]}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.redis_port} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
        )
        log = (self.dir / f"sentinel-{index}.log").open("ab")
        return subprocess.Popen([self.sentinel_binary, str(config)], stdout=log, stderr=log)

    def _start_redis(self) -> dict[str, str]:
        """The Redis processes, and what a replica is told to find them."""
        self.servers["redis"] = self._spawn_redis(self.redis_port)
        if not self.sentinel:
            return {"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0"}
        self.servers["redis replica"] = self._spawn_redis(
            self.redis_replica_port, "--replicaof", "127.0.0.1", str(self.redis_port)
        )
        for index in range(3):
            self.servers[f"sentinel {index + 1}"] = self._spawn_sentinel(index)
        return {
            "GATEWAY_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "GATEWAY_REDIS_MASTER": SENTINEL_MASTER,
        }

    def _spawn_replica(self, node: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{node}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env={
                **os.environ,
                **env,
                "GATEWAY_NODE_ID": node,
                "GATEWAY_PORT": str(port),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def run(self) -> None:
        redis_env = self._start_redis()
        account = DemoAccount()
        ports = BrokerPorts(tcp=_free_port(), ws=_free_port())
        simulator = Simulator(ports, account=account)
        await simulator.start()
        env = {
            "GATEWAY_TOKENS": self.token,
            "COINSUPER_URL": f"mqtt://{ports.host}:{ports.tcp}",
            "COINSUPER_ACCESS_KEY": account.access_key,
            "COINSUPER_SECRET_KEY": account.secret_key,
            "COINSUPER_EMAIL": account.email,
            "COINSUPER_SUBSCRIBE": CHANNELS,
            **redis_env,
            "GATEWAY_LEADER_TTL_MS": str(self.ttl_ms),
        }
        try:
            for index in range(self.replicas):
                node = f"replica-{index + 1}"
                self.ports[node] = self.base_port + index
                self.processes[node] = self._spawn_replica(node, self.ports[node], env)
            print(self._banner(), flush=True)
            await self._watch(env)
        finally:
            for process in self.processes.values():
                process.terminate()
            for process in self.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            await simulator.stop()
            for server in self.servers.values():
                server.terminate()
            for server in self.servers.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(10)

    def _banner(self) -> str:
        if self.sentinel:
            lines = [
                f"coinsuper-gateway cluster: {self.replicas} replicas on a Redis master "
                f"(127.0.0.1:{self.redis_port}, pid {self.servers['redis'].pid}) and its replica "
                f"(127.0.0.1:{self.redis_replica_port}), found through three sentinels "
                f"({', '.join(str(p) for p in self.sentinel_ports)}), following a simulated "
                "exchange",
                f"  kill the master kill -9 {self.servers['redis'].pid}   (the sentinels promote "
                "the replica within a few seconds; streams go on with no reset)",
            ]
        else:
            lines = [
                f"coinsuper-gateway cluster: {self.replicas} replicas on one Redis "
                f"(redis://127.0.0.1:{self.redis_port}/0), following a simulated exchange",
            ]
        for node, port in self.ports.items():
            lines.append(
                f"  {node}       http://127.0.0.1:{port}/   (pid {self.processes[node].pid})"
            )
        first = next(iter(self.ports.values()))
        lines += [
            f"  the cluster     curl http://127.0.0.1:{first}/v1/cluster",
            f"  a stream        curl -N 'http://127.0.0.1:{first}/v1/stream?channels=trades:BTC_USD'",
            f"  private data    curl -H 'Authorization: Bearer {self.token.split(',')[0]}' "
            f"http://127.0.0.1:{first}/v1/account/assets",
            f"  logs            {self.dir}/replica-N.log",
            "  stop            Ctrl-C",
        ]
        return "\n" + "\n".join(lines) + "\n"

    async def _watch(self, env: dict[str, str]) -> None:
        """Say who leads whenever that changes; start a killed replica again."""
        shown: tuple[str | None, int] | None = None
        shown_master: str | None = None
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                await asyncio.sleep(0.5)
                for node, process in list(self.processes.items()):
                    if process.poll() is not None:
                        print(
                            f"{node} exited ({process.returncode}): starting it again", flush=True
                        )
                        self.processes[node] = self._spawn_replica(node, self.ports[node], env)
                report = None
                for port in self.ports.values():
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        answer = await client.get(f"http://127.0.0.1:{port}/v1/cluster")
                        if answer.status_code == 200:
                            report = answer.json()
                            break
                if report is None:
                    continue
                master = report.get("redis", {}).get("master")
                if self.sentinel and master != shown_master:
                    shown_master = master
                    print(f"Redis master: {master}", flush=True)
                leader = report.get("leader")
                now = (leader, int(report.get("term", 0)))
                if now != shown and leader in self.processes:
                    shown = now
                    pid = self.processes[leader].pid
                    print(
                        f"leader: {leader} (term {now[1]}, pid {pid}); kill it with: kill -9 {pid}",
                        flush=True,
                    )


def run(replicas: int, base_port: int, ttl_ms: int, sentinel: bool = False) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its polling is not news
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Launcher(replicas, base_port, ttl_ms, sentinel).run())
