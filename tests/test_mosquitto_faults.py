"""Faults against Debian's Mosquitto: the broker killed and restarted, and
malformed payloads on every topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.ingest.credentials import Login, public_client_id
from app.ingest.links import Backoff, Endpoint, UpstreamLink
from tests.support import (
    ENV,
    PUBLIC_PASSWORD,
    PUBLIC_USER,
    EventStream,
    Mosquitto,
    Publisher,
    expected_client_id,
    gateway,
    sample,
    wait_for,
)

BOOK_TOPIC = ENV + "/api/ws/v1/market/orderBook/BTC_USD/0.01"
TRADES_TOPIC = ENV + "/api/ws/v1/market/tickers/BTC_USD"
DEPTH_TOPIC = ENV + "/api/ws/v1/market/depth/BTC_USD"
KLINE_TOPIC = ENV + "/api/ws/v1/market/kline/BTC_USD/60000"


class Feed:
    """Publishes a fresh order book twice a second until stopped, as the
    exchange would; keeps going (reconnecting) across broker restarts."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.running = True
        self.book = json.loads(sample("orderBook_BTC_USD_0.01.json"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.book["timestamp"] = int(time.time() * 1000)
            with contextlib.suppress(AssertionError):  # broker down: try again
                self.publisher.publish(BOOK_TOPIC, json.dumps(self.book).encode(), qos=0)
            time.sleep(0.5)

    def stop(self) -> None:
        self.running = False
        self.thread.join(20)


def test_broker_restart_turns_channels_stale_then_live(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {
        "COINSUPER_URL": mosquitto.url("tcp"),
        "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01",
        "GATEWAY_STALE_FACTOR": "2",  # stale after 2 push intervals of 2 s
    }
    publisher = Publisher(mosquitto.tcp_port)
    feed = Feed(publisher)
    with gateway(tmp_path, env) as gw:
        channel = "orderbook:BTC_USD:0.01"
        wait_for(lambda: gw.channels()[channel]["status"] == "live", 15, "the book to be live")
        stream = EventStream(f"{gw.base}/v1/stream?channels={channel}")
        wait_for(lambda: stream.named("orderbook"), 10, "a book event on the stream")

        mosquitto.kill()
        killed = time.monotonic()
        wait_for(lambda: gw.channels()[channel]["status"] == "stale", 15, "the book to turn stale")
        stale_after = time.monotonic() - killed
        assert gw.http.get("/v1/orderbook/BTC_USD?step=0.01").json()["stale"] is True
        assert gw.http.get("/readyz").status_code == 503

        mosquitto.start()
        restarted = time.monotonic()
        wait_for(lambda: gw.channels()[channel]["status"] == "live", 10, "the book to be live again")
        live_after = time.monotonic() - restarted
        assert gw.channels()[channel]["link_connects"] >= 2
        assert gw.http.get("/readyz").status_code == 200

        # The same stream saw it all, and was never dropped.
        wait_for(lambda: [s["status"] for s in stream.named("status")][-2:] == ["stale", "live"], 5,
                 "status events stale then live")
        assert not stream.ended
        books_before = len(stream.named("orderbook"))
        wait_for(lambda: len(stream.named("orderbook")) > books_before, 5, "books flowing again")
        print(f"stale {stale_after:.1f} s after the kill; live {live_after:.1f} s after the restart")
        assert stale_after < 4 * 2.0 + 2  # a few push intervals
        stream.close()
    feed.stop()
    publisher.close()


def bad_payloads(good: dict[str, object] | list[object]) -> list[bytes]:
    """Invalid JSON, wrong types, missing fields, 5 MB of junk, invalid UTF-8."""
    wrong_types: object
    if isinstance(good, list):
        wrong_types = [dict(good[0], price=6089.34)] if good else [{"price": 1}]  # type: ignore[arg-type]
    else:
        wrong_types = {key: 12345 for key in good}
    return [
        b'{"symbol": "BTC/USD", "asks": [',
        json.dumps(wrong_types).encode(),
        b"{}",
        b"\x00junk" * (5 * 1024 * 1024 // 5),
        b'{"symbol": "BTC/USD\xff\xfe"}',
    ]


def test_malformed_payloads_on_every_topic(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = {
        "orderbook:BTC_USD:0.01": (BOOK_TOPIC, "orderBook_BTC_USD_0.01.json", "/v1/orderbook/BTC_USD?step=0.01"),
        "trades:BTC_USD": (TRADES_TOPIC, "tickers_BTC_USD.json", "/v1/trades/BTC_USD"),
        "depth:BTC_USD": (DEPTH_TOPIC, "depth_BTC_USD.json", "/v1/depth/BTC_USD"),
        "kline:BTC_USD:1m": (KLINE_TOPIC, "kline_BTC_USD_60000.json", "/v1/kline/BTC_USD?range=1m"),
    }
    env = {"COINSUPER_URL": mosquitto.url("tcp"), "COINSUPER_SUBSCRIBE": ",".join(topics)}
    publisher = Publisher(mosquitto.tcp_port)
    with gateway(tmp_path, env) as gw:
        wait_for(lambda: all(c["link_state"] == "up" for c in gw.channels().values()), 15, "links up")
        good_answers = {}
        for channel, (topic, name, route) in topics.items():
            publisher.publish(topic, sample(name))
            good = wait_for(lambda route=route: (r := gw.http.get(route)).status_code == 200 and r.json(),
                            10, route)
            good_answers[channel] = good
        sent = {}
        for channel, (topic, name, _) in topics.items():
            payloads = bad_payloads(json.loads(sample(name)))
            for payload in payloads:
                publisher.publish(topic, payload)
            sent[channel] = len(payloads)
        wait_for(lambda: all(gw.channels()[c]["rejected"] == n for c, n in sent.items()), 20,
                 "every bad payload counted")
        report = gw.channels()
        for channel, (_, _, route) in topics.items():
            assert report[channel]["messages"] == 1, channel
            assert report[channel]["link_connects"] == 1, "the link was kept"
            answer = gw.http.get(route).json()
            assert answer["data"] == good_answers[channel]["data"]
            assert answer["seq"] == good_answers[channel]["seq"]
        log = gw.log_text()
        for channel, (topic, _, _) in topics.items():
            assert f"rejected a payload on {topic} (channel {channel})" in log
        assert "Traceback" not in log
    publisher.close()


@pytest.mark.processes
def test_broker_unreachable_at_start(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)  # configured, not started: nothing listens on its ports
    env = {"COINSUPER_URL": broker.url("tcp"), "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01"}
    with gateway(tmp_path, env) as gw:
        channel = "orderbook:BTC_USD:0.01"
        report = gw.channels()[channel]
        assert report["status"] == "connecting"
        wait_for(lambda: gw.channels()[channel]["reason"], 5, "a reason for connecting")
        ready = gw.http.get("/readyz")
        assert ready.status_code == 503 and channel in ready.json()["problems"][0]
        assert gw.http.get("/v1/orderbook/BTC_USD?step=0.01&wait=100").status_code == 503
        broker.start()
        publisher = Publisher(broker.tcp_port)
        feed = Feed(publisher)
        try:
            wait_for(lambda: gw.channels()[channel]["status"] == "live", 15, "the book live once the broker is up")
            assert gw.http.get("/readyz").status_code == 200
        finally:
            feed.stop()
            publisher.close()
            broker.kill()


def test_a_frozen_broker_is_taken_as_dead_and_left(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {
        "COINSUPER_URL": mosquitto.url("tcp"),
        "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01",
        "GATEWAY_STALE_FACTOR": "2",
        "COINSUPER_SILENCE_S": "3",
    }
    publisher = Publisher(mosquitto.tcp_port)
    feed = Feed(publisher)
    channel = "orderbook:BTC_USD:0.01"
    with gateway(tmp_path, env) as gw:
        wait_for(lambda: gw.channels()[channel]["status"] == "live", 15, "live")
        mosquitto.freeze()  # SIGSTOP: the TCP connection stays open, nothing comes
        try:
            wait_for(lambda: gw.channels()[channel]["status"] == "stale", 15, "stale while frozen")
            link = wait_for(
                lambda: (c := gw.channels()[channel])["link_state"] != "up" and c,
                15, "the silent link taken as dead",
            )
            assert link["status"] == "stale"
        finally:
            mosquitto.thaw()
        wait_for(lambda: gw.channels()[channel]["status"] == "live", 30, "live after the thaw")
        assert gw.channels()[channel]["link_connects"] >= 2
        assert "no message for 3 s: link taken as dead" in gw.log_text()
    feed.stop()
    publisher.close()


def test_sigterm_closes_streams_cleanly_and_disconnects_upstream(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {"COINSUPER_URL": mosquitto.url("tcp"), "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01,trades:BTC_USD"}
    publisher = Publisher(mosquitto.tcp_port)
    feed = Feed(publisher)
    with gateway(tmp_path, env) as gw:
        wait_for(lambda: all(c["status"] == "live" for c in gw.channels().values() if c["channel"].startswith("order")),
                 15, "live")
        streams = [EventStream(f"{gw.base}/v1/stream?channels=orderbook:BTC_USD:0.01") for _ in range(3)]
        wait_for(lambda: all(s.named("orderbook") for s in streams), 5, "books on every stream")
        assert gw.stop() == 0
        for stream in streams:
            wait_for(lambda s=stream: s.ended, 10, "the stream to end")
            assert stream.error is None  # the response was completed, not cut
        log = gw.log_text()
        assert "ASGI callable returned without completing response" not in log
        assert "Traceback" not in log
    feed.stop()
    publisher.close()
    disconnects = re.findall(r"Received DISCONNECT from (\S+)", mosquitto.log_text())
    assert sorted(set(disconnects) - {f"publisher-{mosquitto.tcp_port}"}) == sorted(
        expected_client_id(ENV + topic)
        for topic in ("/api/ws/v1/market/orderBook/BTC_USD/0.01", "/api/ws/v1/market/tickers/BTC_USD")
    )


def test_a_release_waiting_on_a_frozen_broker_never_delays_heartbeats(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Releasing a channel on a shared link is an UNSUBSCRIBE round trip, up to
    10 s against a frozen broker: the streams' tick does not wait for it."""
    env = {
        "COINSUPER_URL": mosquitto.url("tcp"),
        "COINSUPER_SHARED_LINK": "true",
        "COINSUPER_SUBSCRIBE": "orderbook:BTC_USD:0.01",
        "COINSUPER_SILENCE_S": "60",
        "GATEWAY_IDLE_RELEASE_S": "1",
        "GATEWAY_HEARTBEAT_S": "1",
        "GATEWAY_STALE_FACTOR": "1000",
    }
    with gateway(tmp_path, env) as gw:
        wait_for(lambda: gw.channels()["orderbook:BTC_USD:0.01"]["link_state"] == "up", 15, "the link up")
        assert gw.http.get("/v1/depth/BTC_USD?wait=0").status_code == 503  # asked for once, then idle
        stream = EventStream(f"{gw.base}/v1/stream?channels=orderbook:BTC_USD:0.01")
        mosquitto.freeze()
        try:
            beats = len(stream.comments)
            time.sleep(6)  # the release of depth:BTC_USD starts and waits on the broker meanwhile
            assert len(stream.comments) - beats >= 3, "heartbeats stopped while a release waited"
        finally:
            mosquitto.thaw()
            stream.close()


async def waited(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_for, for a test whose subject runs on this event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class CountingBackoff:
    """A link's backoff, with a count of the waits it was asked for."""

    def __init__(self) -> None:
        self.backoff = Backoff(0.05, 0.05)
        self.waits = 0

    def delay(self, attempt: int) -> float:
        self.waits += 1
        return self.backoff.delay(attempt)


async def test_a_silent_link_logs_in_again_at_once_then_backs_off_if_silent_again(mosquitto: Mosquitto) -> None:
    """A link silent past silence_s was logged in and subscribed: it tries again
    with no backoff, so that the reconnect loses as few pushes as it can; a
    second silent session in a row, or a refused connection, waits as before."""
    login = Login(public_client_id("key", "user@example.com", BOOK_TOPIC), PUBLIC_USER, PUBLIC_PASSWORD)
    backoff = CountingBackoff()
    link = UpstreamLink("public", Endpoint.from_url(mosquitto.url("tcp")), lambda: login, {BOOK_TOPIC},
                        lambda *_: None, silence_s=0.3, backoff=backoff)  # type: ignore[arg-type]
    link.start()
    try:
        await waited(lambda: link.connects >= 2, 20, "a reconnect after the first silence")
        assert backoff.waits == 0  # it followed a silence after a first session: no wait
        await waited(lambda: link.connects >= 3, 20, "a reconnect after the second silence")
        assert backoff.waits == 1  # two silent sessions in a row: that one waited
        connects = link.connects
        mosquitto.kill()  # now the broker refuses: every attempt waits
        await waited(lambda: backoff.waits >= 3, 20, "backoff once the broker is gone")
        assert link.connects <= connects + 1
    finally:
        await link.stop()
