"""The registry: demand, caps, idle release, and made-up symbols, on a clock of
the test's own (links stand in from a recording, so no broker is involved)."""

from __future__ import annotations

import json
import time

import pytest

from app.config import load_settings
from app.domain.channels import Channel, parse_channel
from app.domain.errors import TooMany, UnknownChannel
from app.ingest.links import LinkState
from app.ingest.recording import ReplaySource
from app.ingest.upstream import Upstream
from app.ports import Ending
from app.state.store import Store
from app.streams.admission import Streams
from app.streams.eventlog import LocalLog, RecentEvents
from app.streams.hub import Hub
from tests.sinks import follow
from tests.support import sample

BOOK = parse_channel("orderbook:BTC_USD:0.01")


class Clock:
    """Monotonic time that moves only when the test says (links stamp their
    coming up with the real one, which starts where this one does)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def registry(clock: Clock, **settings: object) -> tuple[Upstream, Hub]:
    hub = Hub(LocalLog(Store("e"), RecentEvents(100, 600_000)), Streams(10, 10), send_timeout_s=10)
    defaults: dict[str, object] = {"gateway_idle_release_s": 10, "gateway_no_data_release_s": 5}
    return Upstream(load_settings(**{**defaults, **settings}), hub, clock, replay=ReplaySource([])), hub


def feed(hub: Hub, channel: Channel) -> None:
    from app.ingest.pipeline import Pipeline

    book = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    book["symbol"], book["step"] = channel.display_symbol, channel.param
    Pipeline({"t": channel}.get, hub).feed("t", json.dumps(book).encode(), book["timestamp"])


async def test_demand_subscribes_once_and_caps_the_upstream() -> None:
    reg, _ = registry(Clock(), gateway_max_upstream=2)
    first = reg.demand(BOOK)
    assert reg.demand(BOOK) is first and len(reg.tracked) == 1
    assert reg.route(first.topic) == BOOK
    reg.demand(parse_channel("orderbook:ETH_USD:0.01"))
    with pytest.raises(TooMany) as refused:
        reg.demand(parse_channel("orderbook:ETH_BTC:0.0001"))
    assert refused.value.cap_name == "upstream subscriptions"


async def test_a_channel_nobody_follows_is_released_after_the_idle_time() -> None:
    clock = Clock()
    reg, hub = registry(clock)
    reg.demand(BOOK)
    feed(hub, BOOK)
    clock.now += 9
    assert await reg.release_idle() == []
    follower = hub.open("address:a", [BOOK], None, 10).stream
    clock.now += 60
    assert await reg.release_idle() == []  # followed: kept, and its idle time starts again
    hub.end(follower, Ending.GONE)
    clock.now += 10
    assert await reg.release_idle() == [BOOK]
    assert BOOK.name not in reg.tracked and hub.state(BOOK) is None


async def test_pinned_channels_stay() -> None:
    clock = Clock()
    reg, _ = registry(clock)
    reg.demand(BOOK, pinned=True)
    clock.now += 10_000
    assert await reg.release_idle() == []


async def test_a_channel_with_no_data_is_released_remembered_and_refused() -> None:
    clock = Clock()
    reg, hub = registry(clock, gateway_unknown_ttl_s=60)
    fake = parse_channel("orderbook:BTC_XYZ:0.0001")
    reg.demand(fake)
    follower = follow(hub, fake)
    clock.now += 4
    assert await reg.release_idle() == []
    clock.now += 2
    assert await reg.release_idle() == [fake]  # followed or not: it never got data
    [status] = follower.events()
    assert status["name"] == "status" and json.loads(status["data"])["status"] == "failed"
    with pytest.raises(UnknownChannel) as refused:
        reg.demand(fake)
    assert "is the symbol right" in refused.value.detail and refused.value.status == 404
    clock.now += 61
    assert reg.demand(fake).channel == fake  # tried again once the time is up
    assert reg.no_data_releases == 1


async def test_the_no_data_wait_counts_only_while_the_link_is_up() -> None:
    clock = Clock()
    reg, _ = registry(clock, gateway_idle_release_s=10_000)
    tracked = reg.demand(parse_channel("orderbook:BTC_XYZ:0.0001"))
    tracked.link.state, tracked.link.up_since = LinkState.CONNECTING, None  # the broker is down
    clock.now += 100
    assert await reg.release_idle() == []
    tracked.link.state, tracked.link.up_since = LinkState.UP, clock.now
    clock.now += 5
    assert len(await reg.release_idle()) == 1


async def test_at_most_so_many_channels_wait_for_their_first_data() -> None:
    clock = Clock()
    reg, hub = registry(clock, gateway_max_pending_upstream=2)
    reg.demand(BOOK)
    reg.demand(parse_channel("orderbook:ABC_XYZ:0.0001"))
    with pytest.raises(TooMany) as refused:
        reg.demand(parse_channel("orderbook:DEF_XYZ:0.0001"))
    assert refused.value.cap_name == "channels waiting for first data"
    feed(hub, BOOK)  # data came: it no longer waits
    reg.demand(parse_channel("orderbook:DEF_XYZ:0.0001"))
    reg.demand(parse_channel("orderbook:BTC_USD:0.1"), pinned=True)  # configured: not held back
