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
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.channels import KLINE_RANGES, Channel, Kind, display_symbol

# A payload larger than this is refused before it is parsed. The largest real
# payload (50 trades, or a 50-level depth chart) is a few kilobytes.
MAX_PAYLOAD_BYTES = 256 * 1024

_DECIMAL_RE = re.compile(r"^[0-9]{1,40}(\.[0-9]{1,40})?$")
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


Update = Snapshot | TradeWindow


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
        return decoder(channel, doc)
    except _Bad as exc:
        return Rejection(str(exc))


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
    if as_string and isinstance(value, str) and value.isdigit() and len(value) <= 13:
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
    levels = []
    for entry in _list(doc, key):
        item = _obj(entry, f"an entry of '{key}'")
        levels.append([_dec(item, price_key), _dec(item, "quantity")])
    levels.sort(key=lambda level: Decimal(level[0]), reverse=descending)
    return levels


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


_DECODERS: dict[Kind, Callable[[Channel, Any], Update]] = {
    Kind.ORDERBOOK: _orderbook,
    Kind.DEPTH: _depth,
    Kind.KLINE: _kline,
    Kind.TRADES: _trades,
}
