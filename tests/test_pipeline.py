"""The ingest pipeline: route, record, decode, apply; one way, never raising."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app.domain.channels import Channel
from app.domain.decode import Update
from app.ingest.pipeline import Pipeline
from app.ingest.recording import Recorder, read_records
from app.state.store import Store
from app.streams.admission import Streams
from app.streams.eventlog import LocalLog, RecentEvents
from app.streams.hub import Hub
from tests.sinks import follow
from tests.support import sample

BOOK = Channel.orderbook("BTC_USD", "0.01")
TRADES = Channel.trades("BTC_USD")
TOPICS = {"t/book": BOOK, "t/trades": TRADES}
NOW = 1_532_686_080_000


def hub() -> Hub:
    return Hub(LocalLog(Store("e"), RecentEvents(1000, 600_000)), Streams(10, 10), send_timeout_s=10)


def test_a_message_goes_from_topic_to_the_streams() -> None:
    local = hub()
    follower = follow(local, BOOK)
    Pipeline(TOPICS.get, local).feed("t/book", sample("orderBook_BTC_USD_0.01.json"), NOW)
    [event] = follower.events()
    assert event["name"] == "orderbook" and event["seq"] == 1
    assert [e.seq for e in local.log.since(0, frozenset({BOOK.name})) or []] == [1]


def test_unknown_topics_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline(TOPICS.get, hub())
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            pipeline.feed("t/nobody", b"{}", NOW)
    assert pipeline.unknown_messages == 3 and pipeline.unknown_topics["t/nobody"] == 3
    assert caplog.text.count("t/nobody") == 1


def test_a_rejection_is_counted_and_logged_once_with_the_topic(caplog: pytest.LogCaptureFixture) -> None:
    local = hub()
    pipeline = Pipeline(TOPICS.get, local)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            pipeline.feed("t/book", b"not json", NOW)
    state = local.store.get(BOOK)
    assert state is not None and state.rejected == 3 and not state.has_data
    assert caplog.text.count("rejected a payload on t/book") == 1


def test_a_repeated_trade_window_is_fresh_but_nothing_new() -> None:
    local = hub()
    pipeline = Pipeline(TOPICS.get, local)
    window = sample("tickers_BTC_USD.json")
    pipeline.feed("t/trades", window, NOW)
    seq = local.store.seq
    pipeline.feed("t/trades", window, NOW + 1500)
    state = local.store.get(TRADES)
    assert local.store.seq == seq and state is not None
    assert state.messages == 2 and state.received_ts == NOW + 1500


def test_the_skew_limit_is_the_pipelines(caplog: pytest.LogCaptureFixture) -> None:
    local = hub()
    book = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    book["timestamp"] = NOW + 2000
    Pipeline(TOPICS.get, local, max_skew_ms=1000).feed("t/book", json.dumps(book).encode(), NOW)
    state = local.store.get(BOOK)
    assert state is not None and state.rejected == 1


class Broken(Hub):
    def apply(self, channel: Channel, update: Update, received_ts: int) -> None:
        raise KeyError("a bug of ours")


def test_a_fault_of_ours_drops_the_message_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline(TOPICS.get, Broken(LocalLog(Store("e"), RecentEvents(10, 1000)), Streams(10, 10), send_timeout_s=10))
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            pipeline.feed("t/book", sample("orderBook_BTC_USD_0.01.json"), NOW)  # never raises
    assert caplog.text.count("failed to apply a message on orderbook:BTC_USD:0.01") == 1


def test_every_message_is_recorded_as_received(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "rec.jsonl.gz")
    pipeline = Pipeline(TOPICS.get, hub(), recorder=recorder)
    pipeline.feed("t/book", b"not json", NOW)
    pipeline.feed("t/nobody", b"x", NOW + 1)
    recorder.close()
    records = list(read_records([tmp_path / "rec.jsonl.gz"]))
    assert [(r.topic, r.payload, r.ts) for r in records] == [("t/book", b"not json", NOW), ("t/nobody", b"x", NOW + 1)]
