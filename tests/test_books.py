"""Book diffs and checksums (app/domain/books.py), and the diff events the store
makes of consecutive books (app/state/events.py). Pure."""

from __future__ import annotations

import itertools
import json
import zlib
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import books
from app.domain.channels import Channel
from app.domain.values import DepthChart, OrderBook
from app.state.store import Store
from tests.support import examples

# Kraken's documented example book (docs.kraken.com, "Book checksum (WebSocket
# v1)"): its checksum is 974947235.
KRAKEN_V1_ASKS = [[f"0.050{n:02d}", "0.00000500"] for n in (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)]
KRAKEN_V1_BIDS = [
    [p, "0.00000500"]
    for p in (
        "0.05000",
        "0.04995",
        "0.04990",
        "0.04980",
        "0.04975",
        "0.04970",
        "0.04965",
        "0.04960",
        "0.04955",
        "0.04950",
    )
]
# The WebSocket v2 page's example snapshot: 3310070434.
KRAKEN_V2_ASKS = [
    ["45285.2", "0.00100000"], ["45286.4", "1.54571953"], ["45286.6", "1.54571109"],
    ["45289.6", "1.54560911"], ["45290.2", "0.15890660"], ["45291.8", "1.54553491"],
    ["45294.7", "0.04454749"], ["45296.1", "0.35380000"], ["45297.5", "0.09945542"],
    ["45299.5", "0.18772827"],
]  # fmt: skip
KRAKEN_V2_BIDS = [
    ["45283.5", "0.10000000"], ["45283.4", "1.54582015"], ["45282.1", "0.10000000"],
    ["45281.0", "0.10000000"], ["45280.3", "1.54592586"], ["45279.0", "0.07990000"],
    ["45277.6", "0.03310103"], ["45277.5", "0.30000000"], ["45277.3", "1.54602737"],
    ["45276.6", "0.15445238"],
]  # fmt: skip


def test_the_checksum_is_krakens_for_its_documented_books() -> None:
    assert books.checksum(KRAKEN_V1_BIDS, KRAKEN_V1_ASKS) == 974947235
    assert books.checksum(KRAKEN_V2_BIDS, KRAKEN_V2_ASKS) == 3310070434


def test_the_checksum_takes_the_top_ten_of_each_side_asks_first() -> None:
    asks = [["1.5", "0.25"], ["1.6", "10"]] + [[f"2.{n}", "1"] for n in range(10)]
    bids = [["1.4", "0.0100"], ["0.9", "3"]]
    text = (
        "15" + "25" + "16" + "10" + "".join(f"2{n}1" for n in range(8)) + "14" + "100" + "9" + "3"
    )
    assert books.checksum(bids, asks) == zlib.crc32(text.encode())
    # A level past the tenth changes nothing.
    assert books.checksum(bids, [*asks[:10], ["9.9", "9"]]) == books.checksum(bids, asks)


# --- any sequence of books, as diffs ------------------------------------------

# Prices on a grid around 100 (ticks of 0.01), quantities exact strings.
quantities = st.decimals(Decimal("0.0001"), Decimal("50"), places=4).map(lambda d: format(d, "f"))


@st.composite
def book(draw: st.DrawFn) -> dict[str, list[list[str]]]:
    """A book of 0–15 levels a side, bids below asks, best first."""
    mid = draw(st.integers(5_000, 15_000))
    bid_ticks = draw(st.lists(st.integers(1, 60), max_size=15, unique=True))
    ask_ticks = draw(st.lists(st.integers(0, 60), max_size=15, unique=True))
    bids = [[format(Decimal(mid - t).scaleb(-2), "f"), draw(quantities)] for t in sorted(bid_ticks)]
    asks = [[format(Decimal(mid + t).scaleb(-2), "f"), draw(quantities)] for t in sorted(ask_ticks)]
    return {"bids": bids, "asks": asks}


@st.composite
def walk(draw: st.DrawFn) -> list[dict[str, list[list[str]]]]:
    """Books that change a little or a lot from one to the next: levels that
    appear, vanish, change and cross the top-10 boundary."""
    first = draw(book())
    out = [first]
    for _ in range(draw(st.integers(1, 12))):
        previous = out[-1]
        if draw(st.booleans()):
            out.append(draw(book()))
            continue
        changed = {}
        for side in books.SIDES:
            levels = {p: q for p, q in previous[side]}
            for price in draw(st.lists(st.sampled_from(sorted(levels) or ["1.00"]), max_size=4)):
                levels.pop(price, None) if draw(st.booleans()) else levels.update(
                    {price: draw(quantities)}
                )
            ordered = sorted(levels.items(), key=lambda kv: Decimal(kv[0]), reverse=side == "bids")
            changed[side] = [[p, q] for p, q in ordered][:15]
        out.append(changed)
    return out


@settings(max_examples=examples(300))
@given(walk())
def test_diffs_applied_in_order_rebuild_every_book(
    sequence: list[dict[str, list[list[str]]]],
) -> None:
    held: dict[str, object] = dict(sequence[0])
    for old, new in itertools.pairwise(sequence):
        data = books.book_changes(old, new)
        held = books.apply(held, data)  # type: ignore[arg-type]
        assert held == new
        assert books.checksum(held["bids"], held["asks"]) == books.checksum(
            new["bids"], new["asks"]
        )  # type: ignore[arg-type]


@settings(max_examples=examples(300))
@given(walk())
def test_merged_diffs_do_what_the_steps_do(sequence: list[dict[str, list[list[str]]]]) -> None:
    merged = books.book_changes(sequence[0], sequence[1])
    for old, new in itertools.pairwise(sequence):
        merged = books.merge(merged, books.book_changes(old, new))
    assert books.apply(sequence[0], merged) == sequence[-1]


def test_other_fields_ride_along_when_they_change() -> None:
    old = {
        "depth_percent": "0.01",
        "asks_min_price": "10.5",
        "bids": [["10.4", "1"]],
        "asks": [["10.5", "2"]],
    }
    new = {
        "depth_percent": "0.01",
        "asks_min_price": "10.6",
        "bids": [["10.4", "1"]],
        "asks": [["10.6", "2"]],
    }
    data = books.book_changes(old, new)
    assert data == {"bids": [], "asks": [["10.6", "2"], ["10.5", "0"]], "asks_min_price": "10.6"}
    assert books.apply(old, data) == new


# --- the store's diff events --------------------------------------------------


def _book(bids: list[list[str]], asks: list[list[str]], ts: int) -> OrderBook:
    return OrderBook("0.01", bids, asks, ts)


def test_the_store_makes_each_books_diff_from_the_one_before() -> None:
    store = Store("e1")
    channel = Channel.orderbook("BTC_USD", "0.01")
    levels = [[f"{6600 - n}.00", "1.0000"] for n in range(15)]
    asks = [[f"{6601 + n}.00", "2.0000"] for n in range(15)]
    (first,) = store.apply(channel, _book(levels, asks, 1), 10)
    assert first.book is not None and first.book.diff is None  # nothing before it
    changed = [["6600.00", "1.5000"], *levels[1:]]
    (second,) = store.apply(channel, _book(changed, asks, 2), 20)
    assert second.book is not None
    diff = second.book.diff
    assert diff is not None and diff.name == "orderbook_diff" and diff.id == second.id
    body = json.loads(diff.data)
    assert list(body) == [
        "channel",
        "symbol",
        "seq",
        "prev_seq",
        "exchange_ts",
        "received_ts",
        "data",
        "checksum",
    ]
    assert body["seq"] == 2 and body["prev_seq"] == 1 and body["exchange_ts"] == 2
    assert body["data"] == {"bids": [["6600.00", "1.5000"]], "asks": []}
    assert body["checksum"] == books.checksum(changed, asks)
    whole = json.loads(second.data)
    assert (
        body["seq"] == whole["seq"]
        and books.apply(json.loads(first.data)["data"], body["data"]) == whole["data"]
    )
    assert second.book.diff is diff  # made once, then shared


def test_a_diff_no_smaller_than_the_whole_event_is_not_made() -> None:
    store = Store("e1")
    channel = Channel.orderbook("BTC_USD", "0.01")
    store.apply(channel, _book([["1.00", "1"]], [["2.00", "1"]], 1), 10)
    (second,) = store.apply(channel, _book([["1.50", "3"]], [["1.60", "4"]], 2), 20)
    assert second.book is not None and second.book.diff is None


def test_a_depth_charts_diff_carries_its_changed_fields() -> None:
    store = Store("e1")
    channel = Channel.depth("BTC_USD")
    bids = [[f"{6600 - n}.00", f"{n}.0000"] for n in range(50)]
    asks = [[f"{6601 + n}.00", f"{n + 1}.0000"] for n in range(50)]
    store.apply(channel, DepthChart("0.01", "6601.00", "6600.00", bids, asks), 10)
    (second,) = store.apply(channel, DepthChart("0.01", "6602.00", "6600.00", bids, asks[1:]), 20)
    assert second.book is not None
    diff = second.book.diff
    assert diff is not None and diff.name == "depth_diff"
    body = json.loads(diff.data)
    assert body["data"] == {"bids": [], "asks": [["6601.00", "0"]], "asks_min_price": "6602.00"}


@settings(max_examples=examples(100))
@given(walk())
def test_the_client_packages_own_copy_proves_the_same_books(sequence: list[dict[str, list[list[str]]]]) -> None:
    """The client package cannot import the gateway: its apply and checksum
    are its own, and agree with the gateway's on any sequence of books."""
    from coinsuper_gateway_client._stream import apply_diff, book_checksum

    held: dict[str, object] = dict(sequence[0])
    for old, new in itertools.pairwise(sequence):
        held = apply_diff(held, books.book_changes(old, new))
        assert held == new and book_checksum(held) == books.checksum(new["bids"], new["asks"])
