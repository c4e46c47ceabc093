"""The private feed's decoders (from the samples) and its rules, as properties:
pushes that are duplicated, reordered or dropped-and-repeated end in the same
state as the clean sequence (docs/upstream.md: private pushes "may be omitted or
duplicated")."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.channels import Channel, Kind
from app.domain.decode import Balances, Fill, OrderChange, Rejection, decode
from app.state.store import Store
from tests.support import sample

ASSETS, ORDERS, FILLS = Channel(Kind.ASSETS), Channel(Kind.ORDERS), Channel(Kind.FILLS)
T0 = 1_542_786_800_000


def test_the_asset_sample_keeps_every_decimal() -> None:
    update = decode(ASSETS, sample("asset_change.json"))
    assert isinstance(update, Balances)
    assert update.user_no == "1600000000000000000"
    assert update.balances["BTC"].available == "0.738763122563248000000000000000"
    assert Decimal(update.balances["USD"].total) == Decimal("3226.05825788")


def test_the_order_sample() -> None:
    update = decode(ORDERS, sample("order_change.constructed.json"))
    assert isinstance(update, OrderChange)
    assert update.order_no == "1616392747273428993" and update.updated_ts == 1542786801575
    assert update.state == "new" and update.side == "buy"
    assert update.price == "6600.00" and update.remaining_quantity == "0.5000"


def test_the_fill_sample() -> None:
    update = decode(FILLS, sample("trade_change.json"))
    assert isinstance(update, Fill)
    assert update.deal_no == "1616392748072460289" and update.ts == 1541512249094  # sent as a string
    assert update.liquidity == "taker" and update.order_type == "market"
    assert update.price == "1234.56000000" and update.symbol == "ETC/BTC"


def test_private_pushes_that_are_wrong_are_rejected() -> None:
    order = json.loads(sample("order_change.constructed.json"))
    for key, value in (("state", "new"), ("orderNo", "12 34"), ("priceLimit", 6600), ("utcUpdate", "soon")):
        assert isinstance(decode(ORDERS, json.dumps({**order, key: value}).encode()), Rejection), key
    fill = json.loads(sample("trade_change.json"))
    for key, value in (("matchType", "BOTH"), ("utcDeal", "1541512249094x"), ("dealNo", None)):
        assert isinstance(decode(FILLS, json.dumps({**fill, key: value}).encode()), Rejection), key
    assets = json.loads(sample("asset_change.json"))
    assets["asset"][0]["total"] = -1
    assert isinstance(decode(ASSETS, json.dumps(assets).encode()), Rejection)


def order_push(order_no: int, state: str, updated: int) -> bytes:
    raw = json.loads(sample("order_change.constructed.json"))
    raw.update(orderNo=str(order_no), state=state, utcCreate=T0, utcUpdate=T0 + updated)
    return json.dumps(raw).encode()


def fill_push(deal_no: int) -> bytes:
    raw = json.loads(sample("trade_change.json"))
    raw.update(dealNo=str(deal_no), utcDeal=str(T0 + deal_no))
    return json.dumps(raw).encode()


def asset_push(currency: str, total: int, updated: int) -> bytes:
    entry = {"currency": currency, "total": total, "available": total, "utcUpdate": T0 + updated}
    return json.dumps({"asset": [entry], "email": "e", "timestamp": T0 + updated, "userNo": "1"}).encode()


def final_state(channel: Channel, pushes: list[bytes]) -> Any:
    store = Store("e")
    for payload in pushes:
        update = decode(channel, payload)
        assert not isinstance(update, Rejection), update
        store.apply(channel, update, T0)
    state = store.get(channel)
    assert state is not None
    if channel.kind is Kind.ORDERS:
        # Each order's newest state (the answer's order among equal times is arrival's).
        return sorted(json.loads(store.order_answer(state, False, None, None))["data"], key=lambda o: o["order_no"])
    if channel.kind is Kind.FILLS:
        return json.loads(store.fill_answer(state, False, 1000))["data"]
    return json.loads(store.snapshot(state, False))["data"]


@st.composite
def faulty(draw: st.DrawFn, clean: list[bytes]) -> list[bytes]:
    """The clean pushes duplicated and reordered at random (every push still
    arrives at least once: a dropped push repeated later counts as arriving)."""
    pushes = list(clean) + draw(st.lists(st.sampled_from(clean), max_size=len(clean))) if clean else []
    return draw(st.permutations(pushes))


@st.composite
def order_histories(draw: st.DrawFn) -> list[bytes]:
    pushes = []
    for order_no in range(draw(st.integers(1, 6))):
        created = draw(st.integers(0, 1000))
        pushes.append(order_push(order_no, "NEW", created))
        if draw(st.booleans()):
            pushes.append(order_push(order_no, "CANCEL", created + draw(st.integers(0, 1000))))
    return pushes


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_orders_end_at_their_newest_state_whatever_the_faults(data: st.DataObject) -> None:
    clean = data.draw(order_histories())
    assert final_state(ORDERS, data.draw(faulty(clean))) == final_state(ORDERS, clean)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fills_are_unique_by_deal_whatever_the_faults(data: st.DataObject) -> None:
    clean = [fill_push(deal) for deal in data.draw(st.lists(st.integers(1, 10_000), unique=True, max_size=12))]
    result = final_state(FILLS, data.draw(faulty(clean))) if clean else []
    assert result == (final_state(FILLS, clean) if clean else [])
    assert len({fill["deal_no"] for fill in result}) == len(clean)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_balances_end_at_each_currencys_newest_entry_whatever_the_faults(data: st.DataObject) -> None:
    clean = [
        asset_push(currency, total, updated)
        for updated, (currency, total) in enumerate(
            data.draw(st.lists(st.tuples(st.sampled_from(["BTC", "USD", "ETH"]), st.integers(0, 10**6)), min_size=1, max_size=10))
        )
    ]
    assert final_state(ASSETS, data.draw(faulty(clean)))["balances"] == final_state(ASSETS, clean)["balances"]
