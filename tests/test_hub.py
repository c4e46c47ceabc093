"""The in-process hub: what a stream starts with, resuming, and changing channels."""

from __future__ import annotations

import asyncio
import json

from app.channels import parse_channel
from app.decode import Trade, TradeWindow, decode
from app.domain import Snapshot
from app.fanout import ReplayBuffer
from app.hub import LocalHub
from app.store import Store
from tests.support import sample

BOOK = parse_channel("orderbook:BTC_USD:0.01")
TRADES = parse_channel("trades:BTC_USD")
T0 = 1_532_686_080_000


def hub(replay: int = 100) -> LocalHub:
    return LocalHub(Store("ep"), ReplayBuffer(replay, 600_000))


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
    opening = local.open_stream([BOOK, TRADES], None, 10)
    assert [e.name for e in opening.backlog] == ["orderbook"]  # trades are a log: none replayed
    assert not opening.reset and opening.position == "ep-2"
    trades(local, T0, T0 + 1)
    assert [e.name for e in opening.subscription.take()] == ["trade"]


def test_resuming_gets_what_was_missed_once_and_a_foreign_id_resets() -> None:
    local = hub()
    trades(local, T0)
    position = local.position()
    trades(local, T0, T0 + 1, T0 + 2)
    book(local, T0)
    opening = local.open_stream([TRADES, BOOK], position, 10)
    assert [(e.name, e.seq) for e in opening.backlog] == [("trade", 2), ("trade", 3), ("orderbook", 4)]
    assert local.open_stream([TRADES], "other-5", 10).reset
    assert local.open_stream([TRADES], "ep-999", 10).reset  # ahead of this process


def test_past_the_replay_buffer_a_stream_resets_to_snapshots() -> None:
    local = hub(replay=2)
    book(local, T0)
    trades(local, T0, T0 + 1, T0 + 2)
    opening = local.open_stream([BOOK, TRADES], "ep-1", 10)
    assert opening.reset and [e.name for e in opening.backlog] == ["orderbook"]


def test_extending_restamps_snapshots_and_shrinking_drops_what_was_pending() -> None:
    local = hub()
    book(local, T0)
    opening = local.open_stream([TRADES], None, 10)
    trades(local, T0)
    backlog, reset = local.extend_stream(opening.subscription, [BOOK], None, restamp=True)
    assert not reset and [e.id for e in backlog] == [f"ep-{local.store.seq}"]  # ids never go back
    assert json.loads(backlog[0].data)["seq"] == 1  # the channel's own seq is the book's
    local.shrink_stream(opening.subscription, [TRADES])
    assert opening.subscription.take() == []
    trades(local, T0, T0 + 5)
    assert opening.subscription.take() == []


async def test_waiting_for_first_data() -> None:
    local = hub()
    assert not await local.wait_for_data(BOOK, 0.05)
    waiting = asyncio.ensure_future(local.wait_for_data(BOOK, 5))
    await asyncio.sleep(0)
    book(local, T0)
    assert await waiting
    assert await local.wait_for_data(BOOK, 0)
