"""Coinsuper payloads → normalized updates. Pure: bytes in, a value out.

Theory of operation: :func:`decode` takes the channel a topic belongs to and the
payload bytes exactly as received, and returns either an update (the normalized
form of docs/api.md, decimals kept as the exact strings the exchange sent) or a
:class:`Rejection` that says in a few words what was wrong. It never raises for
bad input, reads no clock and does no I/O, so every rule here is tested from
fixtures.

Decimals: prices and quantities arrive as strings and are kept as the same
strings once checked to be plain decimals. Balances arrive as JSON numbers with
up to 30 decimals; they are parsed straight to :class:`~decimal.Decimal` (never
float) and written back in plain notation, equal in value and digits.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from app.domain.channels import KLINE_RANGES, Channel, Kind, display_symbol
from app.domain.values import (
    TRADE_WINDOW_MAX,
    Balance,
    Balances,
    Candle,
    DepthChart,
    Fill,
    Level,
    OrderBook,
    OrderChange,
    Snapshot,
    Trade,
    TradeWindow,
    Update,
    newest_ts,
)

__all__ = [
    "TRADE_WINDOW_MAX",
    "Balances",
    "Fill",
    "OrderChange",
    "Rejection",
    "Snapshot",
    "Trade",
    "TradeWindow",
    "Update",
    "decode",
]

# A payload larger than this is refused before it is parsed. The largest real
# payload (50 trades, or a 50-level depth chart) is a few kilobytes.
MAX_PAYLOAD_BYTES = 256 * 1024

# A plain decimal: no sign, no exponent, no leading zero ("007.5" is refused, "0.5" is not).
# Each run of digits is possessive (never given back, which no match needs:
# what follows it is a point, a newline or the end), which makes the pattern
# about a third faster over many values joined. Only runs of one character
# class are possessive: a possessive group could match wrongly before
# CPython 3.11.5 (gh-106052).
_DIGITS_MAX = 40
_INTEGER_PART = rf"(?:0|[1-9][0-9]{{0,{_DIGITS_MAX - 1}}}+)"
_DECIMAL = _INTEGER_PART + rf"(?:\.[0-9]{{1,{_DIGITS_MAX}}}+)?"
_DECIMAL_RE = re.compile(_DECIMAL + r"\Z")


def _joined_re(one: str) -> re.Pattern[str]:
    """Values that each match ``one``, joined by newlines (as :func:`_lines`
    joins them): many checked in one call."""
    return re.compile(rf"(?:{one}\n)*{one}")


_DECIMALS_RE = _joined_re(_DECIMAL)
# Timestamps in milliseconds between 2001 and 2286: anything else is a wrong value.
_TS_MIN, _TS_MAX = 10**12, 10**13 - 1


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was not accepted; the channel's last good state stays."""

    reason: str


class _Bad(Exception):
    """Raised inside this module only, turned into a Rejection at its edge."""


def decode(
    channel: Channel,
    payload: bytes,
    received_ts: int | None = None,
    max_skew_ms: int = 300_000,
) -> Update | Rejection:
    """Decode one payload of ``channel``'s topic. With ``received_ts``, a
    payload stamped more than ``max_skew_ms`` after it is rejected: a clock far
    ahead is a wrong value, and kept it would outrank every genuine push."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection("payload is not UTF-8")
    update = _decode_fast(channel, payload)
    if update is None:  # not the exchange's exact shape, or a check failed: say what
        try:
            doc = _JSON.decode(payload)
            if _has_duplicate_keys(payload, doc):
                return Rejection("payload has a duplicate key")
        except (ValueError, RecursionError, msgspec.MsgspecError):
            return Rejection("payload is not JSON")
        decoder = _DECODERS.get(channel.kind)
        if decoder is None:
            return Rejection(f"no decoder for {channel.kind.value}")
        try:
            update = decoder(channel, doc)
        except _Bad as exc:
            return Rejection(str(exc))
        if isinstance(update, TradeWindow):  # the fast path keeps the push itself
            update = TradeWindow(update.trades, payload)
    if received_ts is not None and newest_ts(update) > received_ts + max_skew_ms:
        return Rejection(
            f"a timestamp is more than {max_skew_ms / 1000:g} s ahead of the receive time"
        )
    return update


# Standard JSON only (no NaN or Infinity), every number with a fraction or an
# exponent parsed straight to a Decimal, never a float; a lone surrogate is
# refused. msgspec parses a book in a third of the json module's time.
def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:  # an exponent past the decimal module's range
        raise ValueError(text[:20]) from None


_JSON = msgspec.json.Decoder(float_hook=_decimal)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise _DuplicateKey
    return doc


def _has_duplicate_keys(payload: bytes, doc: Any) -> bool:
    """Whether an object of the payload has a key twice (which value the
    exchange meant would be a guess).

    Fast path: outside strings, JSON has a colon after every key and nowhere
    else, so the text's colons are at least the keys written; the parsed
    objects hold at most that many keys, and exactly that many only when no
    key came twice. The exchange's shapes are an object, or an array, of flat
    objects, or an object with arrays of flat objects: counting their keys is a
    few ``len`` calls. Otherwise (another shape, a colon inside a string) the
    text is parsed again with a hook that sees every object's pairs."""
    if _shallow_keys(doc) == payload.count(b":"):  # no UTF-8 sequence holds a colon's byte
        return False
    try:
        json.loads(payload, parse_float=_decimal, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        return True
    return False


def _shallow_keys(doc: Any) -> int:
    """Keys of the top object and of the objects in its arrays (-1: no such shape)."""
    if type(doc) is list:
        return _keys_of_objects(doc)
    if type(doc) is not dict:
        return 0
    count = len(doc)
    for value in doc.values():
        if type(value) is list and value:
            inner = _keys_of_objects(value)
            if inner < 0:
                return -1
            count += inner
        elif type(value) is dict:
            return -1
    return count


def _keys_of_objects(items: list[Any]) -> int:
    if not items:
        return 0
    if set(map(type, items)) != {dict}:
        return -1
    return sum(map(len, items))


# --- field readers ---------------------------------------------------------


def _obj(doc: Any, what: str = "payload") -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _Bad(f"{what} is not an object")
    return doc


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise _Bad(f"'{key}' is not an array")
    return value


def _dec(doc: dict[str, Any], key: str) -> str:
    """A decimal sent as a string: kept as the same string."""
    value = doc.get(key)
    if not isinstance(value, str) or not _DECIMAL_RE.match(value):
        raise _Bad(f"'{key}' is not a decimal string")
    return value


def _dec_number(doc: dict[str, Any], key: str) -> str:
    """A decimal sent as a JSON number (balances): exact, in plain notation."""
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _Bad(f"'{key}' is not a number")
    if isinstance(value, str):
        return _dec(doc, key)
    number = Decimal(value)
    sign, digits, exponent = number.as_tuple()
    if sign or not isinstance(exponent, int) or not -40 <= exponent <= 0:
        raise _Bad(f"'{key}' is out of range")
    if len(digits) > 80:
        raise _Bad(f"'{key}' has too many digits")
    return format(number, "f")


def _ts(doc: dict[str, Any], key: str, *, as_string: bool = False) -> int:
    value = doc.get(key)
    if (
        as_string
        and isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and len(value) <= 13
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not _TS_MIN <= value <= _TS_MAX:
        raise _Bad(f"'{key}' is not a timestamp in milliseconds")
    return value


def _symbol(doc: dict[str, Any], channel: Channel) -> str:
    value = doc.get("symbol")
    if not isinstance(value, str):
        raise _Bad("'symbol' is not a string")
    if channel.symbol is not None and value != display_symbol(channel.symbol):
        raise _Bad(f"'symbol' is {value[:20]!r}, the topic's is {channel.display_symbol}")
    return value


def _choice(doc: dict[str, Any], key: str, mapping: dict[str, str]) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or value not in mapping:
        raise _Bad(f"'{key}' is not one of {', '.join(mapping)}")
    return mapping[value]


@dataclass(frozen=True, slots=True)
class _Side:
    """One side of a book, best first: the pairs as sent, and their prices."""

    levels: list[Level]
    prices: list[Decimal]

    @property
    def best(self) -> Decimal | None:
        return self.prices[0] if self.prices else None


def _levels(doc: dict[str, Any], key: str, price_key: str, *, descending: bool) -> _Side:
    """Price levels as ``(price, quantity)`` pairs, sorted best first; two
    levels at one price are refused."""
    entries = _list(doc, key)
    # The hot path of ingest: all values checked by one regular expression over
    # them joined; on any doubt, the slow path below says what was wrong.
    try:
        prices = [entry[price_key] for entry in entries]
        quantities = [entry["quantity"] for entry in entries]
    except (TypeError, KeyError, IndexError):
        return _levels_checked(entries, key, price_key, descending=descending)
    if not _all_decimals(prices + quantities):
        return _levels_checked(entries, key, price_key, descending=descending)
    return _best_first(_pairs(prices, quantities), key, descending)


def _levels_checked(entries: list[Any], key: str, price_key: str, *, descending: bool) -> _Side:
    levels = []
    for entry in entries:
        item = _obj(entry, f"an entry of '{key}'")
        levels.append((_dec(item, price_key), _dec(item, "quantity")))
    return _best_first(levels, key, descending)


def _best_first(levels: list[Level], key: str, descending: bool) -> _Side:
    prices = list(map(Decimal, map(_first, levels)))
    # The exchange sends them best first; sort only if it did not.
    if not _ordered(prices, descending):
        if len(set(prices)) != len(prices):
            raise _Bad(f"'{key}' has two levels at one price")
        pairs = sorted(zip(prices, levels, strict=True), key=_first, reverse=descending)
        levels = [level for _, level in pairs]
        prices = [price for price, _ in pairs]
    return _Side(levels, prices)


def _pairs(prices: list[str], quantities: list[str]) -> list[Level]:
    """Levels: ``(price, quantity)`` pairs, which JSON writes as ``[price, quantity]``."""
    return list(zip(prices, quantities, strict=True))


def _ordered(prices: list[Decimal], descending: bool) -> bool:
    """Strictly best first, checked pairwise in C (map over two shifted lists)."""
    return all(map(operator.gt if descending else operator.lt, prices, prices[1:]))


def _adding_up(quantities: list[Decimal]) -> bool:
    """Cumulative: no quantity smaller than the one before it."""
    return not any(map(operator.gt, quantities, quantities[1:]))


def _not_crossed(best_bid: Decimal | None, best_ask: Decimal | None) -> None:
    if best_bid is not None and best_ask is not None and best_bid >= best_ask:
        raise _Bad("the book is crossed: the best bid is not below the best ask")


@functools.lru_cache(maxsize=64)
def _step_places(step: str) -> int | None:
    """Decimal places of a power-of-ten step (0.01 → 2, 1.0 → 0); None for another step."""
    try:
        number = Decimal(step).normalize()
    except ArithmeticError:  # not a number at all: no grid to check against
        return None
    sign, digits, exponent = number.as_tuple()
    if sign or digits != (1,) or not isinstance(exponent, int):
        return None
    return max(0, -exponent)


@functools.lru_cache(maxsize=64)
def _grid_re(places: int) -> re.Pattern[str]:
    """Checked decimals joined by newlines, none with a non-zero digit past ``places``."""
    one = rf"[0-9]++(?:\.[0-9]{{0,{places}}}+0*+)?"
    return _joined_re(one)


def _all_on_grid(prices: list[str], places: int) -> bool:
    """Every one of ``prices`` (checked decimals) with no digit past ``places``."""
    return not prices or _grid_re(places).fullmatch("\n".join(prices)) is not None


def _on_grid(side: _Side, key: str, step: str) -> None:
    """Every price a multiple of the step: no digit past the step's places."""
    places = _step_places(step)
    if places is not None and not _all_on_grid(list(map(_first, side.levels)), places):
        raise _Bad(f"a price of '{key}' is off the book's step {step}")


_ZERO_LINE_RE = re.compile(r"^0(?:\.0*)?$", re.MULTILINE)


def _no_zero_quantity(side: _Side, key: str) -> None:
    if _ZERO_LINE_RE.search("\n".join(map(_second, side.levels))):
        raise _Bad(f"a level of '{key}' has zero quantity")


def _cumulative(side: _Side, key: str) -> None:
    """A depth chart's quantities add up away from the mid price."""
    if not _adding_up(list(map(Decimal, map(_second, side.levels)))):
        raise _Bad(f"the quantities of '{key}' are not cumulative")


def _best_price(levels: list[Level]) -> Decimal | None:
    """The first level's price (checked decimals, best first)."""
    return Decimal(levels[0][0]) if levels else None


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


# --- one decoder per channel kind -------------------------------------------


def _orderbook(channel: Channel, doc: Any) -> OrderBook:
    book = _obj(doc)
    _symbol(book, channel)
    step = book.get("step")
    if not isinstance(step, str) or (channel.param is not None and step != channel.param):
        raise _Bad(f"'step' is not the topic's step {channel.param}")
    bids = _levels(book, "bids", "limitPrice", descending=True)
    asks = _levels(book, "asks", "limitPrice", descending=False)
    for side, key in ((bids, "bids"), (asks, "asks")):
        _no_zero_quantity(side, key)
        _on_grid(side, key, step)
    _not_crossed(bids.best, asks.best)
    return OrderBook(step, bids.levels, asks.levels, _ts(book, "timestamp"))


def _depth(channel: Channel, doc: Any) -> DepthChart:
    depth = _obj(doc)
    _symbol(depth, channel)
    bids = _levels(depth, "bids", "price", descending=True)
    asks = _levels(depth, "asks", "price", descending=False)
    _cumulative(bids, "bids")
    _cumulative(asks, "asks")
    _not_crossed(bids.best, asks.best)
    return DepthChart(
        depth_percent=_dec(depth, "depthPercent"),
        asks_min_price=_dec(depth, "asksMinPrice"),
        bids_max_price=_dec(depth, "bidsMaxPrice"),
        bids=bids.levels,
        asks=asks.levels,
    )


def _kline(channel: Channel, doc: Any) -> Candle:
    candle = _obj(doc)
    _symbol(candle, channel)
    range_label = channel.param or ""
    return Candle(
        range=range_label,
        range_ms=KLINE_RANGES.get(range_label),
        open_ts=_ts(candle, "timestamp"),
        open=_dec(candle, "first"),
        high=_dec(candle, "max"),
        low=_dec(candle, "min"),
        close=_dec(candle, "last"),
        volume=_dec(candle, "quantity"),
    )


_SIDES = {"BUY": "buy", "SELL": "sell"}


def _trades(channel: Channel, doc: Any) -> TradeWindow:
    if not isinstance(doc, list):
        raise _Bad("payload is not an array")
    if len(doc) > TRADE_WINDOW_MAX:
        raise _Bad(f"the trade window holds more than {TRADE_WINDOW_MAX} trades")
    trades = _trades_fast(channel, doc)
    if trades is None:  # something is wrong: the checked path says what
        trades = []
        for entry in doc:
            item = _obj(entry, "a trade")
            _symbol(item, channel)
            trades.append(
                Trade(
                    price=_dec(item, "price"),
                    quantity=_dec(item, "quantity"),
                    side=_choice(item, "action", _SIDES),
                    ts=_ts(item, "timestamp"),
                )
            )
    trades.reverse()
    if any(a.ts > b.ts for a, b in itertools.pairwise(trades)):
        raise _Bad("trades are not newest first")
    return TradeWindow(tuple(trades))


def _trades_fast(channel: Channel, doc: list[Any]) -> list[Trade] | None:
    """The trades of a well-formed push, checked in bulk; None if anything is off."""
    try:
        symbols = {entry["symbol"] for entry in doc}
        prices = [entry["price"] for entry in doc]
        quantities = [entry["quantity"] for entry in doc]
        sides = [_SIDES[entry["action"]] for entry in doc]
        stamps = [entry["timestamp"] for entry in doc]
    except (TypeError, KeyError, IndexError):
        return None
    if not doc:
        return []
    if symbols != {channel.display_symbol} or not _all_decimals(prices + quantities):
        return None
    if not all(type(ts) is int and _TS_MIN <= ts <= _TS_MAX for ts in stamps):
        return None
    return [Trade(p, q, s, t) for p, q, s, t in zip(prices, quantities, sides, stamps, strict=True)]


def _lines(values: list[Any]) -> str | None:
    """Values joined by newlines, for one regular expression over them all;
    None if a value is no string (it fails the join) or holds a newline (the
    count of them)."""
    try:
        joined = "\n".join(values)
    except TypeError:
        return None
    return joined if joined.count("\n") == len(values) - 1 else None


def _all_decimals(values: list[Any]) -> bool:
    """Every value a decimal string, checked by one regular expression."""
    if not values:
        return True
    joined = _lines(values)
    return joined is not None and _DECIMALS_RE.fullmatch(joined) is not None


_ID_RE = re.compile(r"^[0-9]{1,40}\Z")
_STATE_RE = re.compile(r"^[A-Z_]{1,20}\Z")
_PAIR_RE = re.compile(r"^[A-Za-z0-9]{2,12}/[A-Za-z0-9]{2,12}\Z")
_CURRENCY_RE = re.compile(r"[A-Za-z0-9]{1,12}")  # whole: "$" would let a trailing newline in


def _ident(doc: dict[str, Any], key: str) -> str:
    """An order or deal number: digits as a string (a JSON integer is accepted
    and written back as the same digits)."""
    value = doc.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise _Bad(f"'{key}' is not an identifier")
    return value


def _pair(doc: dict[str, Any]) -> str:
    value = doc.get("symbol")
    if not isinstance(value, str) or not _PAIR_RE.match(value):
        raise _Bad("'symbol' is not a symbol such as BTC/USD")
    return value


def _assets(channel: Channel, doc: Any) -> Balances:
    push = _obj(doc)
    balances = {}
    for entry in _list(push, "asset"):
        item = _obj(entry, "an entry of 'asset'")
        currency = item.get("currency")
        if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
            raise _Bad("'currency' is not a currency code")
        balances[currency.upper()] = Balance(
            total=_dec_number(item, "total"),
            available=_dec_number(item, "available"),
            updated_ts=_ts(item, "utcUpdate"),
        )
    user_no = push.get("userNo")
    if user_no is not None:
        user_no = _ident(push, "userNo")
    return Balances(user_no, balances, _ts(push, "timestamp"))


def _order(channel: Channel, doc: Any) -> OrderChange:
    order = _obj(doc)
    state = order.get("state")
    if not isinstance(state, str) or not _STATE_RE.match(state):
        raise _Bad("'state' is not an order state such as NEW or CANCEL")
    return OrderChange(
        order_no=_ident(order, "orderNo"),
        symbol=_pair(order),
        side=_choice(order, "action", _SIDES),
        price=_dec(order, "priceLimit"),
        quantity=_dec(order, "quantity"),
        remaining_quantity=_dec(order, "quantityRemaining"),
        average_price=_dec(order, "priceAverage"),
        amount=_dec(order, "amount"),
        remaining_amount=_dec(order, "amountRemaining"),
        fee=_dec(order, "fee"),
        state=state.lower(),
        created_ts=_ts(order, "utcCreate"),
        updated_ts=_ts(order, "utcUpdate"),
    )


_LIQUIDITY = {"MAKER": "maker", "TAKER": "taker"}
_ORDER_TYPES = {"MKT": "market", "LMT": "limit"}


def _fill(channel: Channel, doc: Any) -> Fill:
    deal = _obj(doc)
    return Fill(
        deal_no=_ident(deal, "dealNo"),
        order_no=_ident(deal, "orderNo"),
        symbol=_pair(deal),
        side=_choice(deal, "action", _SIDES),
        price=_dec(deal, "price"),
        quantity=_dec(deal, "quantity"),
        liquidity=_choice(deal, "matchType", _LIQUIDITY),
        order_type=_choice(deal, "orderType", _ORDER_TYPES),
        ts=_ts(deal, "utcDeal", as_string=True),
    )


_DECODERS: dict[Kind, Callable[[Channel, Any], Update]] = {
    Kind.ORDERBOOK: _orderbook,
    Kind.DEPTH: _depth,
    Kind.KLINE: _kline,
    Kind.TRADES: _trades,
    Kind.ASSETS: _assets,
    Kind.ORDERS: _order,
    Kind.FILLS: _fill,
}


# --- the fast path ------------------------------------------------------------
#
# Ingest's hot path: a payload of the exchange's exact shape (every key it
# sends, no other, none twice) is parsed by msgspec straight into the structs
# below, and its values are checked against what earlier payloads proved: a
# book's unchanged levels, and the trades a window repeats from the previous
# one, are not checked again. A fast decoder returns the same update the
# checked path would, or None for anything else (another shape, a value that
# fails a check), and the checked path then decides and says why. Every cache
# here maps a value to what it always decodes to, so decoding stays pure; each
# is bounded in entries and in the size of what it keeps: the values' caches
# are emptied when full, a symbol's trades cut to the window at hand.


class _BookLevel(msgspec.Struct, gc=False):
    limitPrice: str
    quantity: str
    amount: Any  # ignored, but parsed as the checked path parses it


class _Book(msgspec.Struct, gc=False):
    symbol: str
    step: str
    timestamp: int
    bids: list[_BookLevel]
    asks: list[_BookLevel]
    limitSize: Any


class _DepthLevel(msgspec.Struct, gc=False):
    price: str
    quantity: str
    stepValue: Any


class _Depth(msgspec.Struct, gc=False):
    symbol: str
    depthPercent: str
    asksMinPrice: str
    bidsMaxPrice: str
    bids: list[_DepthLevel]
    asks: list[_DepthLevel]


class _Trade(msgspec.Struct, gc=False):
    symbol: str
    price: str
    quantity: str
    action: str
    timestamp: int


_BOOK_JSON = msgspec.json.Decoder(_Book, float_hook=_decimal)
_DEPTH_JSON = msgspec.json.Decoder(_Depth, float_hook=_decimal)
_TRADE_JSON = msgspec.json.Decoder(_Trade, float_hook=_decimal)

# The keys of each shape: with every key present (msgspec checks that), the
# payload's colons number exactly these unless a key came twice, a key is not
# the shape's, or a string holds a colon; each of those takes the checked path.
_BOOK_KEYS, _LEVEL_KEYS, _DEPTH_KEYS, _TRADE_KEYS = 6, 3, 6, 5

_CACHE_MAX = 16_384
_DECIMALS: dict[str, Decimal] = {}  # plain decimal strings checked, and their values
_ON_GRID: dict[int, set[str]] = {}  # prices checked to have no digit past that many places
# Trades checked, by symbol and by their bytes, for the windows that repeat
# them: a window repeats the previous one's, so a few windows' worth is all
# that is ever hit.
_TRADES: dict[str | None, dict[bytes, Trade]] = {}
_TRADES_MAX = 4 * TRADE_WINDOW_MAX  # a symbol's; when full, cut to the trades of the window at hand
_SYMBOLS_MAX = 64
# A trade as the exchange writes it is about 100 bytes; whitespace could pad
# one that both paths accept to the payload's size, so a longer piece is not
# kept (the checked path answers): a symbol's trades keep at most 200 × 512 bytes.
_TRADE_PIECE_MAX = 512
_TS_OF = operator.attrgetter("ts")


def forget_checked() -> None:
    """Empty every cache of values already checked, as a new process has
    them (benchmarks, to start each pass alike)."""
    _DECIMALS.clear()
    _ON_GRID.clear()
    _TRADES.clear()


def _decode_fast(channel: Channel, payload: bytes) -> Update | None:
    fast = _FAST.get(channel.kind)
    if fast is None or channel.symbol is None:
        return None
    try:
        return fast(channel, payload)
    # msgspec's errors are ValueErrors from 0.20 on; _Bad: a check the checked path words.
    except (_Bad, ValueError, RecursionError, msgspec.MsgspecError):
        return None


def _known(values: list[str]) -> list[Decimal] | None:
    """The values of decimal strings, each checked once; None if one is not a plain decimal."""
    known = _DECIMALS
    try:
        return list(map(known.__getitem__, values))
    except KeyError:
        pass
    fresh = [value for value in values if value not in known]
    if not _all_decimals(fresh):
        return None
    for value in fresh:
        known[value] = Decimal(value)
    values_of = list(map(known.__getitem__, values))
    if len(known) > _CACHE_MAX:
        known.clear()
    return values_of


def _known_on_grid(prices: list[str], step: str) -> bool:
    places = _step_places(step)
    if places is None or not prices:
        return True
    seen = _ON_GRID.setdefault(places, set())
    if seen.issuperset(prices):
        return True
    fresh = [price for price in prices if price not in seen]
    if not _all_on_grid(fresh, places):
        return False
    if len(seen) + len(fresh) > _CACHE_MAX:
        seen.clear()
    seen.update(fresh)
    return True


def _orderbook_fast(channel: Channel, payload: bytes) -> OrderBook | None:
    book = _BOOK_JSON.decode(payload)
    bids, asks, step = book.bids, book.asks, book.step
    if (
        payload.count(b":") != _BOOK_KEYS + _LEVEL_KEYS * (len(bids) + len(asks))
        or book.symbol != channel.display_symbol
        or (channel.param is not None and step != channel.param)
        or not _TS_MIN <= book.timestamp <= _TS_MAX
    ):
        return None
    sides: list[list[Level]] = []
    best: list[Decimal | None] = []
    for levels, descending in ((bids, True), (asks, False)):
        prices = [level.limitPrice for level in levels]
        quantities = [level.quantity for level in levels]
        values = _known(prices)
        amounts = _known(quantities)
        if (
            values is None
            or amounts is None
            or not _ordered(values, descending)
            or not all(amounts)  # a zero quantity
            or not _known_on_grid(prices, step)
        ):
            return None
        sides.append(_pairs(prices, quantities))
        best.append(values[0] if values else None)
    _not_crossed(*best)  # a _Bad: the checked path says so
    return OrderBook(step, sides[0], sides[1], book.timestamp)


def _depth_fast(channel: Channel, payload: bytes) -> DepthChart | None:
    depth = _DEPTH_JSON.decode(payload)
    bids, asks = depth.bids, depth.asks
    if (
        payload.count(b":") != _DEPTH_KEYS + _LEVEL_KEYS * (len(bids) + len(asks))
        or depth.symbol != channel.display_symbol
        or _known([depth.depthPercent, depth.asksMinPrice, depth.bidsMaxPrice]) is None
    ):
        return None
    sides: list[list[Level]] = []
    for levels, descending in ((bids, True), (asks, False)):
        prices = [level.price for level in levels]
        quantities = [level.quantity for level in levels]
        # A depth chart's bins and sums move with the mid: few values repeat,
        # so they are checked here rather than looked up. Strictly best first;
        # cumulative: no quantity smaller than the one before it.
        if not _in_order(prices, operator.gt if descending else operator.lt) or not _in_order(
            quantities, operator.le
        ):
            return None
        sides.append(_pairs(prices, quantities))
    bid_levels, ask_levels = sides
    # Crossed: a _Bad, and the checked path says so.
    _not_crossed(_best_price(bid_levels), _best_price(ask_levels))
    return DepthChart(
        depth_percent=depth.depthPercent,
        asks_min_price=depth.asksMinPrice,
        bids_max_price=depth.bidsMaxPrice,
        bids=bid_levels,
        asks=ask_levels,
    )


def _in_order(values: list[str], after: Callable[[Any, Any], bool]) -> bool:
    """Every value a plain decimal, and ``after(value, next one)`` for each.

    Plain decimals with as many places as each other, none with a leading zero,
    are ordered as numbers by (length, text), and by text alone when they all
    have as many digits before the point too: one regular expression over
    them joined checks their shape, and no Decimal is made. Values of mixed
    places are checked and compared as Decimals."""
    if not values:
        return True
    joined = _lines(values)
    if joined is None:
        return False
    first = values[0]
    point = first.find(".")
    digits = point if point >= 0 else len(first)
    places = len(first) - point - 1 if point >= 0 else 0
    keys: list[Any]
    if (
        len(first) == len(values[-1])
        and 1 <= digits <= _DIGITS_MAX
        and places <= _DIGITS_MAX
        and _fixed_width_re(digits, places).fullmatch(joined) is not None
    ):
        keys = values  # all of one shape: ordered as text
    elif places <= _DIGITS_MAX and _fixed_places_re(places).fullmatch(joined) is not None:
        keys = list(zip(map(len, values), values, strict=True))
    elif _DECIMALS_RE.fullmatch(joined) is not None:
        keys = list(map(Decimal, values))
    else:
        return False
    return all(map(after, keys, keys[1:]))


@functools.lru_cache(maxsize=256)
def _fixed_width_re(digits: int, places: int) -> re.Pattern[str]:
    """Plain decimals joined by newlines, each with exactly ``digits`` digits
    before its point (no leading zero) and ``places`` after it."""
    whole = "[0-9]" if digits == 1 else f"[1-9][0-9]{{{digits - 1}}}"
    one = whole + (rf"\.[0-9]{{{places}}}" if places else "")
    return _joined_re(one)


@functools.lru_cache(maxsize=_DIGITS_MAX + 1)
def _fixed_places_re(places: int) -> re.Pattern[str]:
    """Plain decimals joined by newlines, each with exactly ``places`` places."""
    one = _INTEGER_PART + (rf"\.[0-9]{{{places}}}" if places else "")
    return _joined_re(one)


def _trades_fast_split(channel: Channel, payload: bytes) -> TradeWindow | None:
    """A window of trades as the exchange writes it (compact, newest first).

    A window repeats most of the one before it, so each trade is looked up by
    its bytes and only the new ones are decoded. The payload is cut at every
    ``},{``; each piece, braced again, must decode alone to one trade with
    exactly its keys. Pieces that are each one whole JSON object, joined by
    commas in brackets, are the array they were cut from, element by element,
    so the window is what decoding the whole payload gives. A ``},{`` inside a
    string leaves a piece that is no whole object: it fails, and the checked
    path answers."""
    if payload == b"[]":
        return TradeWindow((), payload)
    if not (payload.startswith(b"[{") and payload.endswith(b"}]")):
        return None
    pieces = payload[2:-2].split(b"},{")
    if len(pieces) > TRADE_WINDOW_MAX:
        return None
    seen = _TRADES.get(channel.symbol)  # per symbol: a hit proves the symbol too
    if seen is None:
        if len(_TRADES) >= _SYMBOLS_MAX:
            _TRADES.clear()
        seen = _TRADES[channel.symbol] = {}
    fresh = set(pieces).difference(seen)
    if fresh:
        if len(seen) + len(fresh) > _TRADES_MAX:  # keep this window's, forget the rest
            seen = _TRADES[channel.symbol] = {p: seen[p] for p in pieces if p in seen}
        new = list(fresh)
        if any(len(piece) > _TRADE_PIECE_MAX or piece.count(b":") != _TRADE_KEYS for piece in new):
            return None  # padded; or a key twice, or one not a trade's
        checked = _trades_checked(channel, [_TRADE_JSON.decode(b"{%b}" % piece) for piece in new])
        if checked is None:
            return None
        seen.update(zip(new, checked, strict=True))
    trades = list(map(seen.__getitem__, reversed(pieces)))
    stamps = list(map(_TS_OF, trades))
    if any(map(operator.gt, stamps, stamps[1:])):  # not newest first
        return None
    return TradeWindow(tuple(trades), payload)


def _trades_checked(channel: Channel, entries: list[_Trade]) -> list[Trade] | None:
    """New trades, checked together: one pattern over their prices and
    quantities (no Decimal is made: a trade's values are only kept)."""
    try:
        sides = [_SIDES[entry.action] for entry in entries]
    except KeyError:
        return None
    stamps = [entry.timestamp for entry in entries]
    prices = [entry.price for entry in entries]
    quantities = [entry.quantity for entry in entries]
    if (
        any(entry.symbol != channel.display_symbol for entry in entries)
        or not _TS_MIN <= min(stamps) <= max(stamps) <= _TS_MAX
        or not _all_decimals(prices + quantities)
    ):
        return None
    return list(map(Trade, prices, quantities, sides, stamps))


_FAST: dict[Kind, Callable[[Channel, bytes], Update | None]] = {
    Kind.ORDERBOOK: _orderbook_fast,
    Kind.DEPTH: _depth_fast,
    Kind.TRADES: _trades_fast_split,
}
