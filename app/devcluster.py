"""``coinsuper-gateway cluster`` (``make cluster``): a cluster on one machine.

It starts Debian's ``redis-server`` on a free port (its data in a temporary
directory), the simulated exchange, and three replicas of the gateway on ports
8001–8003 (``--base-port``), each a process of its own that shares the Redis.
It prints the URLs, then the leader whenever it changes, with the command that
kills it; Ctrl-C stops everything.
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Launcher:
    def __init__(self, replicas: int, base_port: int, ttl_ms: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server is not installed (Debian package redis-server)")
        self.redis_binary = binary
        self.replicas = replicas
        self.base_port = base_port
        self.ttl_ms = ttl_ms
        self.dir = Path(tempfile.mkdtemp(prefix="coinsuper-cluster-"))
        self.redis_port = _free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.token = os.environ.get("GATEWAY_TOKENS") or "demo-" + secrets.token_urlsafe(12)

    def _spawn_redis(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.redis_binary,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

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
        redis = self._spawn_redis()
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
            "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
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
            redis.terminate()
            redis.wait(10)

    def _banner(self) -> str:
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
                leader = report.get("leader")
                now = (leader, int(report.get("term", 0)))
                if now != shown and leader in self.processes:
                    shown = now
                    pid = self.processes[leader].pid
                    print(
                        f"leader: {leader} (term {now[1]}, pid {pid}); kill it with: kill -9 {pid}",
                        flush=True,
                    )


def run(replicas: int, base_port: int, ttl_ms: int) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its polling is not news
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Launcher(replicas, base_port, ttl_ms).run())
