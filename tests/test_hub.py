"""The in-process hub: what a stream starts with, resuming, and changing channels."""

from __future__ import annotations

import asyncio
import json

from app.admission import Streams
from app.channels import parse_channel
from app.config import load_settings
from app.decode import Trade, TradeWindow, decode
from app.domain import Snapshot
from app.fanout import ReplayBuffer
from app.gateway import Gateway
from app.hub import LocalHub
from app.ports import Opening
from app.store import Store
from tests.sinks import Recorder
from tests.support import sample

BOOK = parse_channel("orderbook:BTC_USD:0.01")
TRADES = parse_channel("trades:BTC_USD")
T0 = 1_532_686_080_000


def hub(replay: int = 100) -> LocalHub:
    return LocalHub(Store("ep"), ReplayBuffer(replay, 600_000), Streams(100, 100), send_timeout_s=10)


def open_stream(local: LocalHub, channels: list, last_event_id: str | None) -> Opening:  # type: ignore[type-arg]
    return local.open("address:a", channels, last_event_id, 10)


def book(local: LocalHub, ts: int) -> None:
    update = decode(BOOK, sample("orderBook_BTC_USD_0.01.json"))
    assert isinstance(update, Snapshot)
    local.apply(BOOK, update, ts)


def trades(local: LocalHub, *stamps: int) -> None:
    local.apply(TRADES, TradeWindow(tuple(Trade("1.00", "0.1", "buy", ts) for ts in stamps)), T0)


def test_a_new_stream_starts_with_the_snapshots_and_its_position() -> None:
    local = hub()
    book(local, T0)
    trades(local, T0)
    opening = open_stream(local, [BOOK, TRADES], None)
    assert [e.name for e in opening.backlog] == ["orderbook"]  # trades are a log: none replayed
    assert not opening.reset and opening.position == "ep-2"
    trades(local, T0, T0 + 1)  # published before the sink is there: written with the opening
    sink = Recorder()
    local.attach(opening.stream, sink, b"")
    assert sink.seqs() == [3]


def test_resuming_gets_what_was_missed_once_and_a_foreign_id_resets() -> None:
    local = hub()
    trades(local, T0)
    position = local.position()
    trades(local, T0, T0 + 1, T0 + 2)
    book(local, T0)
    opening = open_stream(local, [TRADES, BOOK], position)
    assert [(e.name, e.seq) for e in opening.backlog] == [("trade", 2), ("trade", 3), ("orderbook", 4)]
    assert open_stream(local, [TRADES], "other-5").reset
    assert open_stream(local, [TRADES], "ep-999").reset  # ahead of this process


def test_past_the_replay_buffer_a_stream_resets_to_snapshots() -> None:
    local = hub(replay=2)
    book(local, T0)
    trades(local, T0, T0 + 1, T0 + 2)
    opening = open_stream(local, [BOOK, TRADES], "ep-1")
    assert opening.reset and [e.name for e in opening.backlog] == ["orderbook"]


def test_extending_restamps_snapshots_and_shrinking_stops_a_channel() -> None:
    local = hub()
    book(local, T0)
    opening = open_stream(local, [TRADES], None)
    sink = Recorder()
    local.attach(opening.stream, sink, b"")
    trades(local, T0)
    backlog, reset = local.extend(opening.stream, [BOOK], None)
    assert not reset and [e.id for e in backlog] == [f"ep-{local.store.seq}"]  # ids never go back
    assert json.loads(backlog[0].data)["seq"] == 1  # the channel's own seq is the book's
    assert local.channels(opening.stream) == {TRADES.name, BOOK.name}
    local.shrink(opening.stream, [TRADES])
    written = sink.seqs()
    trades(local, T0, T0 + 5)
    assert sink.seqs() == written


async def test_waiting_for_first_data() -> None:
    local = hub()
    assert not await local.wait_for_data(BOOK, 0.05)
    waiting = asyncio.ensure_future(local.wait_for_data(BOOK, 5))
    await asyncio.sleep(0)
    book(local, T0)
    assert await waiting
    assert await local.wait_for_data(BOOK, 0)


async def test_the_state_view_reads_answers_and_says_why_there_is_none() -> None:
    gateway = Gateway(load_settings())
    view = gateway.view
    assert view.read(BOOK) is None  # nothing yet
    status, _reason = view.status(BOOK)
    assert status == "connecting"
    assert not await view.wait_for_data(BOOK, 0.01)
    book(gateway.hub, T0)  # type: ignore[arg-type]
    reading = view.read(BOOK)
    assert reading is not None
    body = json.loads(reading.snapshot())
    assert body["channel"] == BOOK.name and body["stale"] is True  # the clock says 2018: long stale
    assert reading.etag.endswith('-1"') and reading.etag.startswith('"')
    assert gateway.leadership.leads  # one process: it holds the upstream
