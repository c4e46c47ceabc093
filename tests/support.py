"""Real parts for integration tests: Mosquitto, an independent MQTT publisher,
and the gateway as a process of its own."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest

from app.cli import free_port

REPO = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "samples"
ENV = "exchange_ha_prod_hk"
PUBLIC_USER = "api_subscriber"
PUBLIC_PASSWORD = "da65be18f44b33b69603c39fd03ddf49"
PUBLISHER = ("publisher", "publisher-secret-1")
ACCESS_KEY = "test-access-key"
EMAIL = "tester@example.test"


def md5hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def expected_client_id(topic: str) -> str:
    """The client id docs/upstream.md prescribes for a public topic, computed here
    independently of the gateway's code."""
    return md5hex(ACCESS_KEY) + md5hex(EMAIL) + md5hex(topic)


class Fatal(AssertionError):
    """A failure no amount of waiting mends: wait_for raises it at once."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception as exc:  # keep trying until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A server process the tests start, and can pause (SIGSTOP) and continue."""

    process: subprocess.Popen[bytes] | None = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class Mosquitto(Server):
    """Debian's Mosquitto on free ports: a TCP and a WebSocket listener, no
    anonymous access, a password file with the public login and a publisher."""

    def __init__(self, workdir: Path, *, anonymous: bool = False) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("mosquitto is not installed; `make test` installs it (Debian package mosquitto)")
        self.binary = binary
        self.dir = workdir
        self.tcp_port = free_port()
        self.ws_port = free_port()
        self.log = workdir / "mosquitto.log"
        self.passwords = workdir / "passwd"
        self.conf = workdir / "mosquitto.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self.anonymous = anonymous
        self._write_files()

    def _write_files(self) -> None:
        self.passwords.write_text("")
        for user, password in ((PUBLIC_USER, PUBLIC_PASSWORD), PUBLISHER):
            subprocess.run(
                ["mosquitto_passwd", "-b", str(self.passwords), user, password], check=True
            )
        # Anonymous: any user and password pass (a password file would make a
        # user name have to match it), so that the private login, signed anew
        # at every connect, is accepted.
        access = ["allow_anonymous true"] if self.anonymous else [
            "allow_anonymous false", f"password_file {self.passwords}"
        ]
        lines = [
            "per_listener_settings false",
            *access,
            "persistence false",
            f"log_dest file {self.log}",
            "log_type all",
            "connection_messages true",
            f"listener {self.tcp_port} 127.0.0.1",
            f"listener {self.ws_port} 127.0.0.1",
            "protocol websockets",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else it drops to its own user and cannot read our files
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(self.tcp_port) and port_open(self.ws_port), 10, "mosquitto to listen")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def url(self, transport: str) -> str:
        if transport == "ws":
            return f"ws://127.0.0.1:{self.ws_port}/mqtt"
        return f"mqtt://127.0.0.1:{self.tcp_port}"


class RedisServer(Server):
    """Debian's redis-server on a free port with a config of its own: no
    persistence unless asked (``keep``: an append-only file in the workdir, so
    that a restart keeps the data)."""

    def __init__(self, workdir: Path, *, keep: bool = False, extra: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `make test` installs it (Debian package redis-server)")
        self.binary = binary
        self.dir = workdir / f"redis-{id(self)}"
        self.dir.mkdir()
        self.port = free_port()
        self.keep = keep
        self.extra = extra or []  # more options: --replicaof, for one
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.keep else [
            "--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence, "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.cli("ping") == "PONG", 10, "redis-server to answer")

    def role(self) -> str:
        """``master`` or ``slave``, as the server says now."""
        return self.cli("role").split("\n")[0] if self.process is not None else ""

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=10)
        return done.stdout.strip()

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self, *, empty: bool = False) -> None:
        """Stop and start again on the same port: with its data (``keep``) or empty."""
        self.kill()
        if empty:
            for file in self.dir.rglob("*"):
                if file.is_file():
                    file.unlink()
        self.start()



class Sentinels:
    """A replicated Redis with Sentinel, as the cluster's docs set it up:
    Debian's redis-server as master and as its replica, and three Debian
    redis-sentinel processes monitoring the master as ``NAME`` (quorum 2,
    ``down-after-milliseconds`` ``down_after_ms``), all on free ports."""

    NAME = "gateway"

    def __init__(self, workdir: Path, *, down_after_ms: int = 1000, password: str = "") -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            pytest.fail("redis-sentinel is not installed; `make test` installs it (Debian package redis-sentinel)")
        self.binary = binary
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.password = password  # the sentinels' own (requirepass, and to each other)
        # A replica syncs at once (Redis waits 5 s for more replicas by default).
        self.master = RedisServer(workdir, extra=["--repl-diskless-sync-delay", "0"])
        self.master.start()
        self.replica = RedisServer(workdir, extra=["--replicaof", "127.0.0.1", str(self.master.port),
                                                   "--repl-diskless-sync-delay", "0"])
        self.replica.start()
        wait_for(lambda: "master_link_status:up" in self.replica.cli("info", "replication"), 10,
                 "the replica to sync")
        self.ports = [free_port() for _ in range(3)]
        # Each sentinel is told its own id and the others' (and the replica),
        # as Sentinel writes them once it has found them: no waiting seconds
        # for their hellos before a test may begin.
        self.ids = [os.urandom(20).hex() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None, None, None]
        for index in range(3):
            self.start_sentinel(index)
        wait_for(lambda: all(self.sentinel_cli(i, "sentinel", "replicas", self.NAME) for i in range(3))
                 and all(self.known_sentinels(i) >= 2 for i in range(3)), 15,
                 "the sentinels to find the replica and each other")

    def start_sentinel(self, index: int) -> None:
        config = self.workdir / f"sentinel-{index}.conf"
        if not config.exists():  # a restarted sentinel keeps what it rewrote
            config.write_text(
                f"port {self.ports[index]}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.NAME} 5000\n"
                f"sentinel parallel-syncs {self.NAME} 1\n"
                f"sentinel myid {self.ids[index]}\n"
                f"sentinel known-replica {self.NAME} 127.0.0.1 {self.replica.port}\n"
                + "".join(f"sentinel known-sentinel {self.NAME} 127.0.0.1 {port} {self.ids[other]}\n"
                          for other, port in enumerate(self.ports) if other != index)
                + (f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
                   if self.password else ""))
        log = (self.workdir / f"sentinel-{index}.log").open("ab")
        self.processes[index] = subprocess.Popen([self.binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.sentinel_cli(index, "ping") == "PONG", 10, "redis-sentinel to answer")

    def sentinel_cli(self, index: int, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        done = subprocess.run(["redis-cli", "-p", str(self.ports[index]), *auth, *args], capture_output=True,
                              text=True, timeout=10)
        return done.stdout.strip()

    def known_sentinels(self, index: int) -> int:
        lines = self.sentinel_cli(index, "sentinel", "master", self.NAME).split("\n")
        fields = dict(zip(lines[::2], lines[1::2], strict=False))
        return int(fields.get("num-other-sentinels", "0"))

    def master_port(self, index: int = 0) -> int:
        """The master's port as a sentinel says now."""
        answer = self.sentinel_cli(index, "sentinel", "get-master-addr-by-name", self.NAME).split("\n")
        return int(answer[1])

    @property
    def env(self) -> dict[str, str]:
        """What a gateway replica is given to find the master."""
        env = {"GATEWAY_REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.ports),
               "GATEWAY_REDIS_MASTER": self.NAME}
        if self.password:
            env["GATEWAY_REDIS_SENTINEL_PASSWORD"] = self.password
        return env

    def kill_sentinel(self, index: int) -> None:
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        self.processes[index] = None

    def close(self) -> None:
        for index in range(3):
            self.kill_sentinel(index)
        self.replica.kill()
        self.master.kill()


class Publisher:
    """An MQTT client independent of the gateway (paho, used directly) that
    plays the exchange's side: it publishes payloads on upstream topics."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"publisher-{port}")
        self.client.username_pw_set(*PUBLISHER)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "the publisher to connect")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        wait_for(self.client.is_connected, 15, "the publisher to be connected")
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class GatewayProcess:
    """``python -m app serve`` with its own settings, on a free port."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        command: str = "serve",
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"gateway-{self.port}.log"
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("COINSUPER_", "GATEWAY_"))},
            "GATEWAY_PORT": str(self.port),
            "COINSUPER_ACCESS_KEY": ACCESS_KEY,
            "COINSUPER_EMAIL": EMAIL,
            **env,
        }
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", command, *(extra_args or [])],
            cwd=REPO,
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._healthy, 20, "the gateway to answer /healthz")
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise Fatal(f"gateway exited early:\n{self.log.read_text()}")
        try:
            return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def channels(self) -> dict[str, dict[str, Any]]:
        body = self.http.get("/v1/channels").json()
        return {item["channel"]: item for item in body["channels"]}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.http.close()
        self._log_file.close()
        return self.process.returncode


@contextmanager
def gateway(workdir: Path, env: dict[str, str], command: str = "serve") -> Iterator[GatewayProcess]:
    process = GatewayProcess(workdir, env, command)
    try:
        yield process
    finally:
        process.stop()


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


class EventStream:
    """An SSE client in a thread of its own, collecting every event it reads.
    ``close()`` drops the connection, as a client whose network failed."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        import threading

        self.url = url
        self.headers = headers or {}
        self.events: list[dict[str, str]] = []
        self.comments: list[str] = []
        self.retry: str | None = None
        self.status: int | None = None
        self.ended = False
        self.error: BaseException | None = None
        self._closing = False
        self._socket: socket.socket | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.status is not None or self.error is not None, 10, "the stream to open")

    def _run(self) -> None:
        from tests.frames import check_sse

        try:
            with self._client.stream("GET", self.url, headers=self.headers) as response:
                self._socket = response.extensions["network_stream"].get_extra_info("socket")
                self.status = response.status_code
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if event:
                            check_sse(event)  # against openapi/asyncapi.yaml
                        if "data" in event:  # as EventSource: no data, no event
                            self.events.append(event)
                        elif "retry" in event:
                            self.retry = event["retry"]
                        event = {}
                    elif line.startswith(":"):
                        check_sse({":": line})
                        self.comments.append(line)
                    else:
                        field, _, value = line.partition(":")
                        event[field] = value.removeprefix(" ")
        except BaseException as exc:
            if not self._closing:
                self.error = exc
        finally:
            self.ended = True

    def named(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(e["data"]) for e in list(self.events) if e.get("event") == name]

    @property
    def last_id(self) -> str | None:
        ids = [e["id"] for e in list(self.events) if "id" in e]
        return ids[-1] if ids else None

    def close(self) -> None:
        """Drop the connection at once (the reader thread sees it end)."""
        self._closing = True
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._client.close()


class CuttingProxy:
    """A TCP relay in front of a gateway whose connections the test can cut,
    as a network drop would: the client sees its stream end and must resume."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection relayed so far."""
        pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.cuts += 1

    def close(self) -> None:
        self.listener.close()
        self.cut()


def examples(full: int) -> int:
    """How many examples a slow property test draws: three fifths of ``full``
    in ``make test`` (whose whole run must stay under ten minutes on two
    cores), all of them with TESTS_DEEP=1 (``TESTS_DEEP=1 make test``), a
    tenth (at least 20) in the quick runs, ``make test-unit`` and
    ``make test-lowest``, which set TESTS_QUICK=1."""
    if os.environ.get("TESTS_QUICK") == "1":
        return max(20, full // 10)
    return full if os.environ.get("TESTS_DEEP") == "1" else full * 3 // 5
