"""Upstream links that stay up: WebSocket against a server that pings every
second and enforces masking, and TLS (``mqtts://``, ``wss://``, a client
certificate) against Mosquitto's TLS listeners with a CA made here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import websockets
from websockets.asyncio.server import ServerConnection, serve

from app.cli import free_port
from tests.support import ENV, GatewayProcess, Mosquitto, Publisher, sample, wait_for

pytestmark = pytest.mark.processes

BOOK_TOPIC = ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.01"
BOOK = "orderbook:BTC_USD:0.01"


class StrictPingingProxy:
    """A WebSocket server (the websockets library: RFC 6455 to the letter, so it
    closes on an unmasked client frame) that pings every second and pipes each
    session to Mosquitto's TCP listener."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.sessions = 0
        self.closes: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(
            self._session,
            "127.0.0.1",
            self.port,
            subprotocols=[websockets.Subprotocol("mqtt")],
            ping_interval=1,
            ping_timeout=5,
        ):
            self._ready.set()
            await self._stop

    async def _session(self, ws: ServerConnection) -> None:
        self.sessions += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def up() -> None:
            async for message in ws:
                writer.write(message if isinstance(message, bytes) else message.encode())
            writer.close()

        async def down() -> None:
            while data := await reader.read(65536):
                await ws.send(data)

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        self.closes.append(f"code={ws.close_code} reason={ws.close_reason}")
        writer.close()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Publisher]]:
    mosquitto = Mosquitto(tmp_path, anonymous=True)
    mosquitto.start()
    publisher = Publisher(mosquitto.tcp_port)
    try:
        yield mosquitto, publisher
    finally:
        publisher.close()
        mosquitto.kill()


def publish_book(publisher: Publisher, ts: int) -> None:
    book = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    book["timestamp"] = ts
    publisher.publish(BOOK_TOPIC, json.dumps(book).encode())


def test_a_websocket_link_stays_up_against_a_server_pinging_every_second(
    broker: tuple[Mosquitto, Publisher], tmp_path: Path
) -> None:
    mosquitto, publisher = broker
    proxy = StrictPingingProxy(mosquitto.tcp_port)
    gw = GatewayProcess(
        tmp_path,
        {"COINSUPER_URL": f"ws://127.0.0.1:{proxy.port}/mqtt", "COINSUPER_SUBSCRIBE": BOOK},
    )
    try:
        wait_for(lambda: gw.channels()[BOOK]["link_state"] == "up", 15, "the link up")
        ts = int(time.time() * 1000)
        deadline = time.monotonic() + 62  # more than a minute: some sixty pings
        while time.monotonic() < deadline:
            ts += 1000
            publish_book(publisher, ts)
            time.sleep(1)
        wait_for(lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01").json()["exchange_ts"] == ts, 5, "the last book")
        channel = gw.channels()[BOOK]
        assert channel["link_connects"] == 1, proxy.closes
        assert proxy.sessions == 1 and not proxy.closes, proxy.closes
        assert "link " + BOOK + " connecting" not in gw.log_text()
    finally:
        gw.stop()
        proxy.close()


def test_pahos_pong_is_masked_once_patched() -> None:
    from paho.mqtt import client as paho

    from app.protocols import mqtt as pahows

    pahows.apply()
    assert pahows.applied()
    wrapper = object.__new__(paho._WebsocketWrapper)
    frame = paho._WebsocketWrapper._create_frame(wrapper, paho._WebsocketWrapper.OPCODE_PONG, bytearray(b"hi"), 0)
    assert frame[1] & 0x80, "a client's pong must be masked (RFC 6455, 5.1)"


class TlsMosquitto(Mosquitto):
    """Mosquitto with TLS listeners: MQTT over TLS, WebSocket over TLS, and MQTT
    over TLS that requires a client certificate, all with a CA made here."""

    def __init__(self, workdir: Path, ca: trustme.CA) -> None:
        self.ca_file = workdir / "ca.pem"
        self.cert_file = workdir / "server.pem"
        self.key_file = workdir / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))
        self.tls_port, self.wss_port, self.mtls_port = free_port(), free_port(), free_port()
        super().__init__(workdir, anonymous=True)

    def _write_files(self) -> None:
        super()._write_files()
        tls = [f"cafile {self.ca_file}", f"certfile {self.cert_file}", f"keyfile {self.key_file}"]
        lines = [
            f"listener {self.tls_port} 127.0.0.1", *tls,
            f"listener {self.wss_port} 127.0.0.1", "protocol websockets", *tls,
            f"listener {self.mtls_port} 127.0.0.1", *tls, "require_certificate true",
        ]
        with self.conf.open("a") as handle:
            handle.write("\n".join(lines) + "\n")

    def start(self) -> None:
        super().start()
        from tests.support import port_open

        wait_for(lambda: all(port_open(p) for p in (self.tls_port, self.wss_port, self.mtls_port)), 10, "TLS listeners")


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[TlsMosquitto, Publisher, trustme.CA]]:
    ca = trustme.CA()
    mosquitto = TlsMosquitto(tmp_path, ca)
    mosquitto.start()
    publisher = Publisher(mosquitto.tcp_port)
    try:
        yield mosquitto, publisher, ca
    finally:
        publisher.close()
        mosquitto.kill()


@pytest.mark.parametrize("scheme", ["mqtts", "wss", "mqtts+client-certificate"])
def test_tls_links_verify_the_broker_against_a_private_ca(
    tls_broker: tuple[TlsMosquitto, Publisher, trustme.CA], tmp_path: Path, scheme: str
) -> None:
    mosquitto, publisher, ca = tls_broker
    env = {"COINSUPER_SUBSCRIBE": BOOK, "COINSUPER_TLS_CA_FILE": str(mosquitto.ca_file)}
    if scheme == "mqtts":
        env["COINSUPER_URL"] = f"mqtts://127.0.0.1:{mosquitto.tls_port}"
    elif scheme == "wss":
        env["COINSUPER_URL"] = f"wss://127.0.0.1:{mosquitto.wss_port}/mqtt"
    else:
        client = ca.issue_cert("gateway-client")
        cert, key = tmp_path / "client.pem", tmp_path / "client.key"
        client.cert_chain_pems[0].write_to_path(str(cert))
        client.private_key_pem.write_to_path(str(key))
        env |= {
            "COINSUPER_URL": f"mqtts://127.0.0.1:{mosquitto.mtls_port}",
            "COINSUPER_TLS_CERT_FILE": str(cert),
            "COINSUPER_TLS_KEY_FILE": str(key),
        }
    gw = GatewayProcess(tmp_path, env)
    try:
        wait_for(lambda: gw.channels()[BOOK]["link_state"] == "up", 15, "the TLS link up")
        ts = int(time.time() * 1000)
        publish_book(publisher, ts)
        wait_for(
            lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01&wait=0").json().get("exchange_ts") == ts,
            10,
            "the book over TLS",
        )
    finally:
        gw.stop()


def test_a_certificate_the_ca_did_not_sign_fails_the_link_readably(
    tls_broker: tuple[TlsMosquitto, Publisher, trustme.CA], tmp_path: Path
) -> None:
    mosquitto, _, _ = tls_broker
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    gw = GatewayProcess(
        tmp_path,
        {
            "COINSUPER_URL": f"mqtts://127.0.0.1:{mosquitto.tls_port}",
            "COINSUPER_SUBSCRIBE": BOOK,
            "COINSUPER_TLS_CA_FILE": str(stranger),
            "COINSUPER_RECONNECT_MIN_S": "0.2",
            "COINSUPER_RECONNECT_MAX_S": "0.5",
        },
    )
    try:
        wait_for(lambda: gw.channels()[BOOK]["status"] == "failed", 15, "the link failed")
        channel = gw.channels()[BOOK]
        assert channel["reason"].startswith("TLS: ") and "certificate" in channel["reason"], channel
        attempts_then = next(link["attempts"] for link in gw.http.get("/v1/channels").json()["links"])
        time.sleep(3)  # it keeps trying, with backoff, and says so once
        attempts = next(link["attempts"] for link in gw.http.get("/v1/channels").json()["links"])
        assert attempts > attempts_then
        log = gw.log_text()
        assert log.count(f"link {BOOK} failed: TLS") == 1, log
        assert "Traceback" not in log
    finally:
        gw.stop()


def test_a_broken_tls_setting_stops_at_start_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("nonsense\n")
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env={"PATH": "/usr/bin:/bin", "COINSUPER_URL": "mqtts://127.0.0.1:1", "COINSUPER_TLS_CA_FILE": str(bad)},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2
    assert "COINSUPER_TLS_CA_FILE" in result.stderr and "Traceback" not in result.stderr
    with contextlib.suppress(Exception):
        pass
