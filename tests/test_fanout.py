from __future__ import annotations

import asyncio
import contextlib

from app.fanout import Cursor, Fanout, ReplayBuffer, Subscription
from app.store import Event


def event(seq: int, channel: str = "trades:BTC_USD", conflatable: bool = False, ts: int = 0) -> Event:
    name = "orderbook" if conflatable else "trade"
    return Event(seq, channel, name, b"{}", event_id=f"e-{seq}", conflatable=conflatable, received_ts=ts)


def test_cursor_parse() -> None:
    assert Cursor.parse("ab12-42") == Cursor("ab12", 42)
    assert Cursor.parse("garbage") is None
    assert Cursor.parse("ab-") is None
    assert Cursor.parse("-5") is None


def test_snapshots_conflate_and_keep_ids_in_order() -> None:
    sub = Subscription({"book", "trades:BTC_USD"}, capacity=10)
    sub.offer(event(1, "book", conflatable=True))
    sub.offer(event(2))
    sub.offer(event(3, "book", conflatable=True))
    assert [e.seq for e in sub.take()] == [2, 3]


def test_append_only_overflow_closes_the_subscription() -> None:
    sub = Subscription({"trades:BTC_USD"}, capacity=2)
    for seq in range(1, 4):
        sub.offer(event(seq))
    assert sub.overflowed
    assert sub.take() == []


def test_fanout_only_reaches_followers() -> None:
    fanout = Fanout()
    a = Subscription({"trades:BTC_USD"}, 10)
    b = Subscription({"book"}, 10)
    fanout.retarget(a, a.channels)
    fanout.retarget(b, b.channels)
    fanout.publish(event(1))
    assert [e.seq for e in a.take()] == [1] and b.take() == []
    fanout.remove(a)
    assert fanout.subscribers("trades:BTC_USD") == 0


def test_replay_since_conflates_snapshots_and_keeps_every_trade() -> None:
    replay = ReplayBuffer(capacity=100, max_age_ms=10_000)
    for seq, (channel, snap) in enumerate(
        [("book", True), ("trades:BTC_USD", False), ("book", True), ("trades:BTC_USD", False), ("other", False)],
        start=1,
    ):
        replay.append(event(seq, channel, snap))
    missed = replay.since(1, frozenset({"book", "trades:BTC_USD"}))
    assert missed is not None
    assert [e.seq for e in missed] == [2, 3, 4]


def test_replay_knows_when_it_cannot() -> None:
    replay = ReplayBuffer(capacity=3, max_age_ms=10_000)
    for seq in range(1, 6):
        replay.append(event(seq))
    assert replay.since(1, frozenset({"trades:BTC_USD"})) is None
    assert [e.seq for e in replay.since(2, frozenset({"trades:BTC_USD"})) or []] == [3, 4, 5]
    aged = ReplayBuffer(capacity=100, max_age_ms=1000)
    aged.append(event(1, ts=0))
    aged.append(event(2, ts=5000))
    assert aged.since(0, frozenset({"trades:BTC_USD"})) is None


async def test_wait_wakes_on_offer_and_tick_asks_for_heartbeats() -> None:
    sub = Subscription({"trades:BTC_USD"}, 10)
    fanout = Fanout()
    fanout.retarget(sub, sub.channels)
    try:
        await asyncio.wait_for(sub.wait(), 0.05)
        raise AssertionError("woke with nothing pending")
    except TimeoutError:
        pass
    asyncio.get_running_loop().call_later(0.01, sub.offer, event(1))
    await asyncio.wait_for(sub.wait(), 5)
    assert [e.seq for e in sub.take()] == [1]
    fanout.tick(sub.last_sent + 20, heartbeat_s=15, send_timeout_s=30)
    await asyncio.wait_for(sub.wait(), 5)
    assert sub.heartbeat_due


async def test_tick_cancels_a_send_blocked_past_the_timeout() -> None:
    sub = Subscription({"trades:BTC_USD"}, 10)
    fanout = Fanout()
    fanout.retarget(sub, sub.channels)
    sub.sender = asyncio.create_task(asyncio.sleep(60))
    sub.sending_since = 100.0
    assert fanout.tick(100.0 + 5, heartbeat_s=15, send_timeout_s=10) == 0
    assert fanout.tick(100.0 + 11, heartbeat_s=15, send_timeout_s=10) == 1
    assert sub.stalled
    with contextlib.suppress(asyncio.CancelledError):
        await sub.sender
    assert sub.sender.cancelled()


def test_retarget_moves_a_subscription_between_channels() -> None:
    fanout = Fanout()
    sub = Subscription((), 10)
    fanout.retarget(sub, frozenset({"a", "b"}))
    assert fanout.subscribers("a") == 1 and fanout.subscribers("b") == 1
    fanout.retarget(sub, frozenset({"b", "c"}))
    assert fanout.subscribers("a") == 0 and fanout.subscribers("c") == 1
    fanout.publish(event(1, "a"))
    fanout.publish(event(2, "c"))
    assert [e.seq for e in sub.take()] == [2]


def test_cursor_refuses_non_ascii_digits() -> None:
    assert Cursor.parse("ab12-²") is None
    assert Cursor.parse("ab12-٣") is None
