"""Decoding from the exchange's own samples, and from anything at all."""

from __future__ import annotations

import itertools
import json
import operator
import re
from decimal import Decimal
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import decode as decode_module
from app.domain.channels import parse_channel
from app.domain.decode import MAX_PAYLOAD_BYTES, Rejection, Snapshot, Trade, TradeWindow, decode
from app.domain.values import Balances, Candle, DepthChart, Fill, OrderBook, OrderChange
from app.simulator.market import Market
from tests.support import sample

BOOK = parse_channel("orderbook:BTC_USD:0.01")
DEPTH = parse_channel("depth:BTC_USD")
KLINE = parse_channel("kline:BTC_USD:1m")
TRADES = parse_channel("trades:BTC_USD")
ASSETS, ORDERS, FILLS = parse_channel("assets"), parse_channel("orders"), parse_channel("fills")
ALL = [BOOK, DEPTH, KLINE, TRADES, ASSETS, ORDERS, FILLS]
# The one type each kind of channel decodes to.
TYPES = {
    BOOK: OrderBook, DEPTH: DepthChart, KLINE: Candle, TRADES: TradeWindow,
    ASSETS: Balances, ORDERS: OrderChange, FILLS: Fill,
}
SAMPLES = {
    BOOK: "orderBook_BTC_USD_0.01.json", DEPTH: "depth_BTC_USD.json", KLINE: "kline_BTC_USD_60000.json",
    TRADES: "tickers_BTC_USD.json", ASSETS: "asset_change.json",
    ORDERS: "order_change.constructed.json", FILLS: "trade_change.json",
}


def test_order_book_sample() -> None:
    update = decode(BOOK, sample("orderBook_BTC_USD_0.01.json"))
    assert isinstance(update, Snapshot)
    assert update.exchange_ts == 1532686075803
    assert update.wire()["step"] == "0.01"
    assert update.wire()["bids"][0] == ("6674.56", "0.8490")
    assert update.wire()["asks"][0] == ("6674.89", "0.0524")
    assert len(update.wire()["bids"]) == len(update.wire()["asks"]) == 15
    bids = [Decimal(p) for p, _ in update.wire()["bids"]]
    asks = [Decimal(p) for p, _ in update.wire()["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)


def test_order_book_levels_are_sorted_best_first_whatever_the_wire_order() -> None:
    raw = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    raw["bids"].reverse()
    raw["asks"].reverse()
    update = decode(BOOK, json.dumps(raw).encode())
    assert isinstance(update, Snapshot)
    assert update.wire()["bids"][0] == ("6674.56", "0.8490")
    assert update.wire()["asks"][0] == ("6674.89", "0.0524")


def test_depth_sample_keeps_cumulative_quantities_and_zero_first_bid() -> None:
    update = decode(DEPTH, sample("depth_BTC_USD.json"))
    assert isinstance(update, Snapshot)
    assert update.exchange_ts is None
    assert update.wire()["depth_percent"] == "0.01"
    assert update.wire()["bids"][0] == ("6674.72", "0.0000")
    assert update.wire()["asks"][-1] == ("6741.46", "241.8331")


def test_kline_sample() -> None:
    update = decode(KLINE, sample("kline_BTC_USD_60000.json"))
    assert isinstance(update, Snapshot)
    assert update.wire() == {
        "range": "1m", "range_ms": 60000, "open_ts": 1532686140000, "open": "6616.40",
        "high": "6616.48", "low": "6616.40", "close": "6616.45", "volume": "31.76239814",
    }


def test_trades_sample_is_reversed_to_oldest_first() -> None:
    update = decode(TRADES, sample("tickers_BTC_USD.json"))
    assert isinstance(update, TradeWindow)
    assert len(update.trades) == 19
    assert update.trades[-1] == Trade("6089.34", "0.4337", "buy", 1532623321348)
    assert update.trades[0] == Trade("6674.49", "0.1612", "buy", 1531118165685)


def test_an_empty_trade_array_is_a_valid_push() -> None:
    update = decode(TRADES, b"[]")
    assert isinstance(update, TradeWindow) and update.trades == () and update.raw == b"[]"


def rejected(channel_payload: tuple[object, bytes]) -> str:
    channel, payload = channel_payload
    result = decode(channel, payload)  # type: ignore[arg-type]
    assert isinstance(result, Rejection), result
    return result.reason


def test_reasons_are_short_and_clear() -> None:
    assert rejected((BOOK, b"{oops")) == "payload is not JSON"
    assert rejected((BOOK, b"\xff\xfe")) == "payload is not UTF-8"
    assert rejected((BOOK, b"x" * (MAX_PAYLOAD_BYTES + 1))).startswith("payload of")
    assert rejected((BOOK, b"[]")) == "payload is not an object"
    assert rejected((TRADES, b"{}")) == "payload is not an array"
    assert rejected((KLINE, b'{"symbol":"BTC/USD"}')) == "'timestamp' is not a timestamp in milliseconds"
    raw = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    raw["asks"][0]["limitPrice"] = 6674.89
    assert rejected((BOOK, json.dumps(raw).encode())) == "'limitPrice' is not a decimal string"
    raw["symbol"] = "ETH/USD"
    assert "topic's is BTC/USD" in rejected((BOOK, json.dumps(raw).encode()))
    assert rejected((BOOK, b"NaN")) == "payload is not JSON"
    assert rejected((BOOK, b"[" * 100_000 + b"]" * 100_000)) == "payload is not JSON"


def test_trades_out_of_order_are_refused() -> None:
    raw = json.loads(sample("tickers_BTC_USD.json"))
    raw.reverse()
    assert rejected((TRADES, json.dumps(raw).encode())) == "trades are not newest first"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


def well_typed(channel: object, result: object) -> None:
    """A rejection with a short reason, or the one type of the channel's kind."""
    if isinstance(result, Rejection):
        assert 0 < len(result.reason) <= 200
    else:
        assert isinstance(result, TYPES[channel])  # type: ignore[index]


@settings(max_examples=300)
@given(st.sampled_from(ALL), st.binary(max_size=400))
def test_any_bytes_decode_or_are_rejected(channel: object, payload: bytes) -> None:
    result = decode(channel, payload)  # type: ignore[arg-type]
    well_typed(channel, result)
    if payload.strip() not in (b"[]",):  # an empty trade push is the one short valid payload
        assert isinstance(result, Rejection)


@settings(max_examples=300)
@given(st.sampled_from(ALL), json_values)
def test_any_json_decodes_or_is_rejected(channel: object, value: object) -> None:
    result = decode(channel, json.dumps(value).encode())  # type: ignore[arg-type]
    well_typed(channel, result)


def test_every_sample_decodes_to_its_kinds_type() -> None:
    for channel, name in SAMPLES.items():
        result = decode(channel, sample(name))
        assert isinstance(result, TYPES[channel]), (name, result)


def paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path to a leaf of a JSON document."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in paths(v, (*prefix, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in paths(v, (*prefix, i))]
    return [prefix]


def replaced(doc: object, path: tuple[object, ...], value: object) -> object:
    copy = json.loads(json.dumps(doc))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


# Fields the gateway ignores (deprecated or informational): any JSON value passes
# (but a number no parser takes, or a lone surrogate, rejects the payload).
IGNORED = {"amount", "stepValue", "limitSize", "email"}


@settings(max_examples=400)
@given(st.data())
def test_a_sample_with_one_field_made_wrong_is_rejected_naming_it(data: st.DataObject) -> None:
    channel = data.draw(st.sampled_from(ALL))
    doc = json.loads(sample(SAMPLES[channel]))
    path = data.draw(st.sampled_from([p for p in paths(doc) if p and p[-1] not in IGNORED]))
    wrong = data.draw(st.sampled_from([{"x": 1}, [1], "not-a-value-1e5", -1, None, True]))
    if path[-1] == "userNo" and wrong is None:
        return  # optional: a push may leave it out
    result = decode(channel, json.dumps(replaced(doc, path, wrong)).encode())  # type: ignore[arg-type]
    assert isinstance(result, Rejection), (path, wrong, result)
    assert str(path[-1]) in result.reason or "not an object" in result.reason or "symbol" in result.reason, (path, result.reason)


quantities = st.decimals(min_value=Decimal("0.00000001"), max_value=10**9, places=8, allow_nan=False).map(lambda d: f"{d:f}")


@st.composite
def valid_books(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Two sides of a plausible book at step 0.01: distinct prices on the grid,
    bids below asks, no zero quantity (implausible books are tested below)."""
    mid = draw(st.integers(10_000, 10**9))
    def side(sign: int) -> list[tuple[str, str]]:
        offsets = draw(st.lists(st.integers(1, 5000), max_size=15, unique=True))
        return [(f"{Decimal(mid + sign * o) / 100:.2f}", draw(quantities)) for o in offsets]
    return side(-1), side(1)


@settings(max_examples=200)
@given(valid_books(), st.integers(10**12, 10**13 - 1))
def test_order_book_keeps_every_decimal_string_exactly(book: tuple[list[tuple[str, str]], list[tuple[str, str]]], ts: int) -> None:
    bids, asks = book
    payload = {
        "symbol": "BTC/USD", "step": "0.01", "timestamp": ts, "limitSize": 15,
        "bids": [{"limitPrice": p, "quantity": q, "amount": "0"} for p, q in bids],
        "asks": [{"limitPrice": p, "quantity": q, "amount": "0"} for p, q in asks],
    }
    update = decode(BOOK, json.dumps(payload).encode())
    assert isinstance(update, Snapshot)
    assert sorted(map(tuple, update.wire()["bids"])) == sorted(bids)
    assert sorted(map(tuple, update.wire()["asks"])) == sorted(asks)
    assert [Decimal(p) for p, _ in update.wire()["bids"]] == sorted((Decimal(p) for p, _ in bids), reverse=True)


def test_a_trailing_newline_is_not_a_decimal() -> None:
    raw = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    raw["bids"][0]["quantity"] = "0.8490\n"
    assert rejected((BOOK, json.dumps(raw).encode())) == "'quantity' is not a decimal string"
    trades = json.loads(sample("tickers_BTC_USD.json"))
    trades[0]["price"] = "6089.34\n"
    assert rejected((TRADES, json.dumps(trades).encode())) == "'price' is not a decimal string"


@settings(max_examples=200)
@given(st.integers(0, 18), st.sampled_from(["price", "quantity", "action", "timestamp", "symbol"]),
       st.one_of(st.integers(), st.text(max_size=8), st.none(), st.lists(st.integers(), max_size=2)))
def test_one_bad_trade_anywhere_rejects_the_push(index: int, key: str, value: object) -> None:
    window = json.loads(sample("tickers_BTC_USD.json"))
    valid = {"price": "1.5", "quantity": "2", "action": "BUY", "timestamp": window[index]["timestamp"],
             "symbol": "BTC/USD"}
    window[index][key] = value
    result = decode(TRADES, json.dumps(window).encode())
    if value == valid[key] or (key in ("price", "quantity") and isinstance(value, str)
                               and value.isascii() and value.replace(".", "", 1).isdigit()
                               and "." not in (value[0], value[-1]) and len(value) <= 40):
        return  # the value happens to be valid
    if key == "action" and value in ("BUY", "SELL"):
        return
    if key == "timestamp" and type(value) is int and 10**12 <= value < 10**13:
        return  # another instant with 13 digits of milliseconds, the range accepted
    assert isinstance(result, Rejection), (key, value)


# --- the fast path agrees with the checked path -------------------------------
#
# A payload of the exchange's exact shape is decoded by typed msgspec structs
# and caches of values already checked (app/domain/decode.py, "the fast path");
# anything else by the checked path. Both must give the same answer for every
# payload: the same update, or a rejection (whose reason the checked path gives).

FAST_KINDS = [BOOK, DEPTH, TRADES]
ETH_TRADES = parse_channel("trades:ETH_USD")
ODD_VALUES = [
    "0", "0.0", "01", "1.", ".5", "6650.015", "6650.01", "6674.90", "1e5", "+1", " 1", "1_0", "٣",
    "0.8490\n", "a:b", "},{", '"},{"', "BTC/USD", "ETH/USD", "BUY", "SELL", "sell", "", 0, 1, -1, 1.5, 10**12, 10**13,
    10**30, True, None, [], {}, ["6650.01", "1"],
]
# Values written into the text as they are: numbers no parser should take, a lone surrogate.
RAW_VALUES = ["1" + "0" * 4400, "1e9999999999999999999999", "-1e-9999999999999999999999", '"\\ud800"', "1.5e3"]


def checked_only(channel: object, payload: bytes) -> object:
    with mock.patch.dict(decode_module._FAST, clear=True):
        return decode(channel, payload)  # type: ignore[arg-type]


def simulator_payloads() -> list[tuple[object, bytes]]:
    market = Market(seed=5)
    now, out = 1_800_000_000_000, []
    for _ in range(40):
        now += 250
        market.tick(now, 5.0, 0.1)
        out += [(BOOK, market.orderbook("BTC_USD", "0.01", now)), (DEPTH, market.depth("BTC_USD")),
                (TRADES, market.tickers("BTC_USD"))]
    return out


SIMULATED = simulator_payloads()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[object, bytes]:
    """A payload of a fast kind, real or simulated, with one thing made odd or none."""
    if draw(st.booleans()):
        channel = draw(st.sampled_from(FAST_KINDS))
        doc = json.loads(sample(SAMPLES[channel]))
    else:
        channel, raw = draw(st.sampled_from(SIMULATED))
        doc = json.loads(raw)
    how = draw(st.sampled_from(["none", "value", "raw", "swap", "drop", "extra", "duplicate", "text"]))
    objects = [doc] if isinstance(doc, dict) else []
    objects += [item for v in (doc.values() if isinstance(doc, dict) else [doc]) if isinstance(v, list)
                for item in v if isinstance(item, dict)]
    text = None
    if how == "value":
        doc = replaced(doc, draw(st.sampled_from(paths(doc))), draw(st.sampled_from(ODD_VALUES)))
    elif how == "raw":
        doc = replaced(doc, draw(st.sampled_from(paths(doc))), "@raw@")
        text = json.dumps(doc).replace('"@raw@"', draw(st.sampled_from(RAW_VALUES)))
    elif how == "swap":
        side = doc if isinstance(doc, list) else doc[draw(st.sampled_from(["bids", "asks"]))]
        if len(side) >= 2:
            i, j = draw(st.integers(0, len(side) - 1)), draw(st.integers(0, len(side) - 1))
            side[i], side[j] = side[j], side[i]
    elif how in ("drop", "extra") and objects:
        target = draw(st.sampled_from(objects))
        if how == "drop":
            target.pop(draw(st.sampled_from(sorted(target))))
        else:
            target[draw(st.sampled_from(["x", "amount", "price", "note"]))] = draw(st.sampled_from(ODD_VALUES))
    elif how == "duplicate" and objects:
        key, value = draw(st.sampled_from(sorted(draw(st.sampled_from(objects)).items())))
        text = json.dumps(doc).replace(f'"{key}": ', f'"{key}": {json.dumps(value)}, "{key}": ', 1)
    elif how == "text":
        text = json.dumps(doc)
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([":", ",", "}", "]", '"', " ", "\\u0000", "0"])) + text[at:]
    return channel, (text if text is not None else json.dumps(doc, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))).encode()


@settings(max_examples=600)
@given(mutated())
def test_the_fast_path_answers_what_the_checked_path_answers(case: tuple[object, bytes]) -> None:
    channel, payload = case
    expected = checked_only(channel, payload)
    assert decode(channel, payload) == expected  # type: ignore[arg-type]
    assert decode(channel, payload) == expected  # type: ignore[arg-type]  # again, from its caches


def test_every_simulated_payload_takes_the_fast_path() -> None:
    for channel, payload in SIMULATED:
        update = decode_module._FAST[channel.kind](channel, payload)  # type: ignore[attr-defined]
        assert update is not None and update == checked_only(channel, payload)


def test_a_trade_checked_for_one_symbol_is_not_taken_for_another() -> None:
    window = sample("tickers_BTC_USD.json")
    assert isinstance(decode(TRADES, window), TradeWindow)
    assert rejected((ETH_TRADES, window)) == "'symbol' is 'BTC/USD', the topic's is ETH/USD"


def test_a_value_is_checked_against_each_step_it_is_used_with() -> None:
    doc = json.loads(sample("orderBook_BTC_USD_0.01.json"))
    assert isinstance(decode(BOOK, json.dumps(doc).encode()), OrderBook)
    doc["step"] = "0.1"  # the same prices, now off the book's grid
    coarse = parse_channel("orderbook:BTC_USD:0.1")
    assert "off the book's step 0.1" in rejected((coarse, json.dumps(doc).encode()))


def test_numbers_past_any_parser_are_rejected_on_every_channel_never_raised() -> None:
    for raw in RAW_VALUES[:3]:
        for channel, name in SAMPLES.items():
            doc = json.loads(sample(name))
            for path in paths(doc):
                payload = json.dumps(replaced(doc, path, "@raw@")).replace('"@raw@"', raw).encode()
                result = decode(channel, payload)
                assert isinstance(result, Rejection), (name, path, raw)


def test_a_currency_with_a_trailing_newline_is_no_currency_code() -> None:
    doc = json.loads(sample("asset_change.json"))
    doc["asset"][0]["currency"] = doc["asset"][0]["currency"] + "\n"
    assert rejected((ASSETS, json.dumps(doc).encode())) == "'currency' is not a currency code"


def plain_decimal(text: str) -> bool:
    """The reading the patterns encode, written out: digits, at most one point
    with digits on both sides, no leading zero, at most 40 digits a side."""
    whole, point, fraction = text.partition(".")
    digits = "0123456789"
    return (
        0 < len(whole) <= 40
        and all(c in digits for c in whole)
        and (whole == "0" or whole[0] != "0")
        and (not point or (0 < len(fraction) <= 40 and all(c in digits for c in fraction)))
    )


DECIMAL_TEXT = st.text(alphabet="0123456789.\n", max_size=12) | st.sampled_from(
    ["1" * 40, "1" * 41, "0." + "1" * 40, "0." + "1" * 41, "1" * 40 + "." + "0" * 40]
)


# The patterns as they were before their runs of digits were made possessive.
OLD_DECIMAL = r"(?:0|[1-9][0-9]{0,39})(?:\.[0-9]{1,40})?"


def old_grid(places: int) -> re.Pattern[str]:
    one = rf"[0-9]+(?:\.[0-9]{{0,{places}}}0*)?"
    return re.compile(rf"(?:{one}\n)*{one}")


@settings(max_examples=2000)
@given(st.lists(DECIMAL_TEXT, min_size=1, max_size=4), st.integers(0, 4))
def test_the_decimal_patterns_read_plain_decimals_as_written(values: list[str], places: int) -> None:
    """The possessive patterns of the fast path accept exactly the plain
    decimals, and each accepts what it did before its runs were possessive."""
    plain = all(map(plain_decimal, values))
    joined = "\n".join(values)
    assert decode_module._all_decimals(values) == plain
    assert decode_module._in_order(values, lambda a, b: True) == plain
    assert (decode_module._DECIMAL_RE.match(values[0]) is not None) == plain_decimal(values[0])
    assert (decode_module._DECIMALS_RE.fullmatch(joined) is None) == (
        re.fullmatch(rf"(?:{OLD_DECIMAL}\n)*{OLD_DECIMAL}", joined) is None
    )
    assert (decode_module._grid_re(places).fullmatch(joined) is None) == (
        old_grid(places).fullmatch(joined) is None
    )


@settings(max_examples=1000)
@given(
    st.lists(st.decimals(min_value=0, max_value=10**6, places=3), max_size=6),
    st.integers(0, 4),
)
def test_ordering_by_length_and_text_is_ordering_by_value(numbers: list[Decimal], places: int) -> None:
    """Plain decimals of as many places as each other compare as their values
    do; values of mixed places fall back to Decimals."""
    values = [f"{number:.{places}f}" for number in numbers]
    if values:  # the same places: ordered by length and text, no Decimal made
        assert decode_module._fixed_places_re(places).fullmatch("\n".join(values))
    mixed = [*values, "1.5"]
    for after in (operator.lt, operator.le, operator.gt, operator.ge):
        for texts in (values, mixed):
            by_value = all(after(Decimal(a), Decimal(b)) for a, b in itertools.pairwise(texts))
            assert decode_module._in_order(texts, after) == by_value, (texts, after)


@pytest.mark.parametrize(
    "texts",
    [
        ["6012.50", "6011.75", "6009.00"],  # one length: compared as text
        ["9.00", "10.00"],  # as long in sum as two of the first's length: not as text
        ["10.00", "9.00", "100.00"],
        ["99.50", "9.90", "98.00"],
        ["0.50", "0.75", "1.00"],
    ],
)
def test_ordering_decimals_of_one_length_by_text_and_of_several_by_value(texts: list[str]) -> None:
    for after in (operator.lt, operator.le, operator.gt, operator.ge):
        by_value = all(after(Decimal(a), Decimal(b)) for a, b in itertools.pairwise(texts))
        assert decode_module._in_order(texts, after) == by_value, (texts, after)


def trade_window(first: int, count: int, *, pad: int = 0) -> bytes:
    """``count`` trades, newest first, of one trade a millisecond from ``first``."""
    trades = [
        {"symbol": "BTC/USD", "price": f"{6000 + i}.01", "quantity": "0.5000", "action": "BUY",
         "timestamp": 1_800_000_000_000 + i}
        for i in range(first + count - 1, first - 1, -1)
    ]
    text = json.dumps(trades, separators=(",", ":"))
    return text.replace('"BUY"', '"BUY"' + " " * pad, 1).encode()


def test_the_trade_cache_stays_bounded_and_answers_as_the_checked_path() -> None:
    decode_module.forget_checked()
    for n in range(6):  # 300 distinct trades, more than a symbol's cache keeps
        payload = trade_window(50 * n, 50)
        assert decode(TRADES, payload) == checked_only(TRADES, payload)
        assert len(decode_module._TRADES["BTC_USD"]) <= decode_module._TRADES_MAX
    again = trade_window(100, 50)  # trades the cache has forgotten: checked again
    assert decode(TRADES, again) == checked_only(TRADES, again)


def test_a_padded_trade_is_answered_by_the_checked_path_and_not_kept() -> None:
    decode_module.forget_checked()
    payload = trade_window(0, 3, pad=4000)  # whitespace JSON allows, inside one trade
    assert decode_module._trades_fast_split(TRADES, payload) is None
    assert isinstance(decode(TRADES, payload), TradeWindow)
    assert decode(TRADES, payload) == checked_only(TRADES, payload)
    assert all(len(piece) <= decode_module._TRADE_PIECE_MAX for piece in decode_module._TRADES.get("BTC_USD", {}))
