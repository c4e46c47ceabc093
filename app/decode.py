"""Coinsuper payloads → normalized updates. Pure: bytes in, a value out.

Theory of operation: :func:`decode` takes the channel a topic belongs to and the
payload bytes exactly as received, and returns either an update (the normalized
form of API.md, decimals kept as the exact strings the exchange sent) or a
:class:`Rejection` that says in a few words what was wrong. It never raises for
bad input, reads no clock and does no I/O, so every rule here is tested from
fixtures.

Decimals: prices and quantities arrive as strings and are kept as the same
strings once checked to be plain decimals. Balances arrive as JSON numbers with
up to 30 decimals; they are parsed straight to :class:`~decimal.Decimal` (never
float) and written back in plain notation, equal in value and digits.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.channels import KLINE_RANGES, Channel, Kind, display_symbol

# A payload larger than this is refused before it is parsed. The largest real
# payload (50 trades, or a 50-level depth chart) is a few kilobytes.
MAX_PAYLOAD_BYTES = 256 * 1024

_DECIMAL_RE = re.compile(r"^[0-9]{1,40}(\.[0-9]{1,40})?\Z")
# Many decimals joined by newlines, checked in one call.
_DECIMALS_RE = re.compile(r"(?:[0-9]{1,40}(?:\.[0-9]{1,40})?\n)*[0-9]{1,40}(?:\.[0-9]{1,40})?")
# Timestamps in milliseconds between 2001 and 2286: anything else is a wrong value.
_TS_MIN, _TS_MAX = 10**12, 10**13 - 1


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was not accepted; the channel's last good state stays."""

    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole new state of a snapshot channel (depth, order book, candle, assets)."""

    data: dict[str, Any]
    exchange_ts: int | None


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade as the exchange pushes it. Trades carry no id: two distinct
    trades may be equal in every field."""

    price: str
    quantity: str
    side: str
    ts: int

    def to_data(self) -> dict[str, Any]:
        return {"price": self.price, "quantity": self.quantity, "side": self.side, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class TradeWindow:
    """One push of the trade topic: the latest trades, oldest first (the wire
    order, newest first, is reversed here so that logs append in order)."""

    trades: tuple[Trade, ...]
    raw: bytes = field(default=b"", compare=False)  # the push as received


@dataclass(frozen=True, slots=True)
class Balances:
    """A push of the asset topic: the balances it carries, by currency."""

    user_no: str | None
    balances: dict[str, dict[str, Any]]
    exchange_ts: int


@dataclass(frozen=True, slots=True)
class OrderChange:
    """A push of the order topic: one order's state at ``updated_ts``."""

    order_no: str
    updated_ts: int
    data: dict[str, Any]

    @property
    def is_open(self) -> bool:
        return bool(self.data["state"] == "new")


@dataclass(frozen=True, slots=True)
class Fill:
    """A push of the fill topic: one deal, unique by ``deal_no``."""

    deal_no: str
    ts: int
    data: dict[str, Any]


Update = Snapshot | TradeWindow | Balances | OrderChange | Fill


class _Bad(Exception):
    """Raised inside this module only, turned into a Rejection at its edge."""


def decode(channel: Channel, payload: bytes) -> Update | Rejection:
    """Decode one payload of ``channel``'s topic."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("payload is not UTF-8")
    try:
        doc = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return Rejection("payload is not JSON")
    decoder = _DECODERS.get(channel.kind)
    if decoder is None:
        return Rejection(f"no decoder for {channel.kind.value}")
    try:
        update = decoder(channel, doc)
    except _Bad as exc:
        return Rejection(str(exc))
    if isinstance(update, TradeWindow):
        return TradeWindow(update.trades, payload)
    return update


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


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


def _levels(doc: dict[str, Any], key: str, price_key: str, *, descending: bool) -> list[list[str]]:
    """Price levels as ``[price, quantity]`` pairs, sorted best first."""
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
    return _best_first([[p, q] for p, q in zip(prices, quantities, strict=True)], descending)


def _levels_checked(
    entries: list[Any], key: str, price_key: str, *, descending: bool
) -> list[list[str]]:
    levels = []
    for entry in entries:
        item = _obj(entry, f"an entry of '{key}'")
        levels.append([_dec(item, price_key), _dec(item, "quantity")])
    return _best_first(levels, descending)


def _best_first(levels: list[list[str]], descending: bool) -> list[list[str]]:
    prices = [Decimal(level[0]) for level in levels]
    ordered = (
        all(a > b for a, b in itertools.pairwise(prices))
        if descending
        else all(a < b for a, b in itertools.pairwise(prices))
    )
    if not ordered:  # the exchange sends them best first; sort only if it did not
        levels = [
            level
            for _, level in sorted(zip(prices, levels, strict=True), key=_first, reverse=descending)
        ]
    return levels


def _first(pair: tuple[Decimal, list[str]]) -> Decimal:
    return pair[0]


# --- one decoder per channel kind -------------------------------------------


def _orderbook(channel: Channel, doc: Any) -> Snapshot:
    book = _obj(doc)
    _symbol(book, channel)
    step = book.get("step")
    if not isinstance(step, str) or (channel.param is not None and step != channel.param):
        raise _Bad(f"'step' is not the topic's step {channel.param}")
    data = {
        "step": step,
        "bids": _levels(book, "bids", "limitPrice", descending=True),
        "asks": _levels(book, "asks", "limitPrice", descending=False),
    }
    return Snapshot(data, _ts(book, "timestamp"))


def _depth(channel: Channel, doc: Any) -> Snapshot:
    depth = _obj(doc)
    _symbol(depth, channel)
    data = {
        "depth_percent": _dec(depth, "depthPercent"),
        "asks_min_price": _dec(depth, "asksMinPrice"),
        "bids_max_price": _dec(depth, "bidsMaxPrice"),
        "bids": _levels(depth, "bids", "price", descending=True),
        "asks": _levels(depth, "asks", "price", descending=False),
    }
    return Snapshot(data, None)


def _kline(channel: Channel, doc: Any) -> Snapshot:
    candle = _obj(doc)
    _symbol(candle, channel)
    range_label = channel.param or ""
    open_ts = _ts(candle, "timestamp")
    data = {
        "range": range_label,
        "range_ms": KLINE_RANGES.get(range_label),
        "open_ts": open_ts,
        "open": _dec(candle, "first"),
        "high": _dec(candle, "max"),
        "low": _dec(candle, "min"),
        "close": _dec(candle, "last"),
        "volume": _dec(candle, "quantity"),
    }
    return Snapshot(data, open_ts)


_SIDES = {"BUY": "buy", "SELL": "sell"}


def _trades(channel: Channel, doc: Any) -> TradeWindow:
    if not isinstance(doc, list):
        raise _Bad("payload is not an array")
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


def _all_decimals(values: list[Any]) -> bool:
    """Every value a decimal string: one regular expression over them all."""
    if not all(type(v) is str and "\n" not in v for v in values):
        return False
    return not values or _DECIMALS_RE.fullmatch("\n".join(values)) is not None


_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,40}\Z")
_STATE_RE = re.compile(r"^[A-Z_]{1,20}\Z")
_PAIR_RE = re.compile(r"^[A-Za-z0-9]{2,12}/[A-Za-z0-9]{2,12}\Z")


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
        if not isinstance(currency, str) or not re.match(r"^[A-Za-z0-9]{1,12}$", currency):
            raise _Bad("'currency' is not a currency code")
        balances[currency.upper()] = {
            "total": _dec_number(item, "total"),
            "available": _dec_number(item, "available"),
            "updated_ts": _ts(item, "utcUpdate"),
        }
    user_no = push.get("userNo")
    if user_no is not None:
        user_no = _ident(push, "userNo")
    return Balances(user_no, balances, _ts(push, "timestamp"))


def _order(channel: Channel, doc: Any) -> OrderChange:
    order = _obj(doc)
    state = order.get("state")
    if not isinstance(state, str) or not _STATE_RE.match(state):
        raise _Bad("'state' is not an order state such as NEW or CANCEL")
    order_no = _ident(order, "orderNo")
    updated_ts = _ts(order, "utcUpdate")
    data = {
        "order_no": order_no,
        "symbol": _pair(order),
        "side": _choice(order, "action", _SIDES),
        "price": _dec(order, "priceLimit"),
        "quantity": _dec(order, "quantity"),
        "remaining_quantity": _dec(order, "quantityRemaining"),
        "average_price": _dec(order, "priceAverage"),
        "amount": _dec(order, "amount"),
        "remaining_amount": _dec(order, "amountRemaining"),
        "fee": _dec(order, "fee"),
        "state": state.lower(),
        "created_ts": _ts(order, "utcCreate"),
        "updated_ts": updated_ts,
    }
    return OrderChange(order_no, updated_ts, data)


_LIQUIDITY = {"MAKER": "maker", "TAKER": "taker"}
_ORDER_TYPES = {"MKT": "market", "LMT": "limit"}


def _fill(channel: Channel, doc: Any) -> Fill:
    deal = _obj(doc)
    deal_no = _ident(deal, "dealNo")
    ts = _ts(deal, "utcDeal", as_string=True)
    data = {
        "deal_no": deal_no,
        "order_no": _ident(deal, "orderNo"),
        "symbol": _pair(deal),
        "side": _choice(deal, "action", _SIDES),
        "price": _dec(deal, "price"),
        "quantity": _dec(deal, "quantity"),
        "liquidity": _choice(deal, "matchType", _LIQUIDITY),
        "order_type": _choice(deal, "orderType", _ORDER_TYPES),
        "ts": ts,
    }
    return Fill(deal_no, ts, data)


_DECODERS: dict[Kind, Callable[[Channel, Any], Update]] = {
    Kind.ORDERBOOK: _orderbook,
    Kind.DEPTH: _depth,
    Kind.KLINE: _kline,
    Kind.TRADES: _trades,
    Kind.ASSETS: _assets,
    Kind.ORDERS: _order,
    Kind.FILLS: _fill,
}
