"""The normalized market and account data: typed values, no I/O, no framework.

Decoding (:mod:`app.domain.decode`) makes these from the exchange's payloads; the
store (:mod:`app.state.store`) keeps and applies them. Prices, quantities and
balances are the exact decimal strings the exchange sent (never floats).
Only :meth:`Snapshot.wire` and friends make JSON-shaped values, at the edge,
in the shape docs/api.md gives each answer's ``data``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

# A JSON value as the answers carry it (read-only views: a list of price
# levels is a sequence of sequences of strings).
Json = str | int | bool | None | Sequence["Json"] | Mapping[str, "Json"]
Level = tuple[str, str]  # (price, quantity); the answers carry it as [price, quantity]
# The exchange's trade window holds the latest 50 trades (docs/upstream.md).
TRADE_WINDOW_MAX = 50


class Value(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A value of this module: immutable, compared by its fields (and hashed
    by them, where they are hashable), and made in a twentieth of a frozen
    dataclass's time (ingest makes a few for every message). Converted from
    JSON (a cluster's entries), a key it does not have is refused."""


class Snapshot(Value, frozen=True):
    """A whole new state of a snapshot channel (order book, depth chart, candle, balances)."""

    @property
    def exchange_ts(self) -> int | None:
        raise NotImplementedError

    def wire(self) -> dict[str, Json]:
        """The answer's ``data`` (made each time it is asked for; the store asks once)."""
        raise NotImplementedError


class OrderBook(Snapshot, frozen=True):
    step: str
    bids: list[Level]  # best (highest) first
    asks: list[Level]  # best (lowest) first
    ts: int

    @property
    def exchange_ts(self) -> int | None:
        return self.ts

    def wire(self) -> dict[str, Json]:
        return {"step": self.step, "bids": self.bids, "asks": self.asks}


class DepthChart(Snapshot, frozen=True):
    depth_percent: str
    asks_min_price: str
    bids_max_price: str
    bids: list[Level]  # quantities cumulative away from the mid
    asks: list[Level]

    @property
    def exchange_ts(self) -> int | None:
        return None  # the depth chart carries no time

    def wire(self) -> dict[str, Json]:
        return {
            "depth_percent": self.depth_percent,
            "asks_min_price": self.asks_min_price,
            "bids_max_price": self.bids_max_price,
            "bids": self.bids,
            "asks": self.asks,
        }


class Candle(Snapshot, frozen=True):
    range: str
    range_ms: int | None
    open_ts: int
    open: str
    high: str
    low: str
    close: str
    volume: str

    @property
    def exchange_ts(self) -> int | None:
        return self.open_ts

    def wire(self) -> dict[str, Json]:
        return {
            "range": self.range,
            "range_ms": self.range_ms,
            "open_ts": self.open_ts,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
        }


class Balance(Value, frozen=True):
    total: str
    available: str
    updated_ts: int

    def wire(self) -> dict[str, Json]:
        return {"total": self.total, "available": self.available, "updated_ts": self.updated_ts}


class Balances(Snapshot, frozen=True):
    """A push of the asset topic (some currencies), or the merged balances."""

    user_no: str | None
    balances: dict[str, Balance]
    ts: int

    @property
    def exchange_ts(self) -> int | None:
        return self.ts

    def wire(self) -> dict[str, Json]:
        return {
            "user_no": self.user_no,
            "balances": {currency: b.wire() for currency, b in sorted(self.balances.items())},
        }


class Trade(Value, frozen=True):
    """One trade as the exchange pushes it. Trades carry no id: two distinct
    trades may be equal in every field. Its fields are its :meth:`wire` keys,
    in their order: the store encodes a trade itself, with no dict between."""

    price: str
    quantity: str
    side: str
    ts: int

    def wire(self) -> dict[str, Json]:
        return {"price": self.price, "quantity": self.quantity, "side": self.side, "ts": self.ts}


class TradeWindow(Value, frozen=True):
    """One push of the trade topic: the latest trades, oldest first (the wire
    order, newest first, is reversed here so that logs append in order)."""

    trades: tuple[Trade, ...]
    raw: bytes = b""  # the push as received: equal windows are equal pushes


class OrderChange(Value, frozen=True):
    """A push of the order topic: one order's state at ``updated_ts``."""

    order_no: str
    symbol: str
    side: str
    price: str
    quantity: str
    remaining_quantity: str
    average_price: str
    amount: str
    remaining_amount: str
    fee: str
    state: str  # "new" or "cancel" (the exchange pushes only these)
    created_ts: int
    updated_ts: int

    @property
    def is_open(self) -> bool:
        return self.state == "new"

    def wire(self) -> dict[str, Json]:
        return {
            "order_no": self.order_no,
            "symbol": self.symbol,
            "side": self.side,
            "price": self.price,
            "quantity": self.quantity,
            "remaining_quantity": self.remaining_quantity,
            "average_price": self.average_price,
            "amount": self.amount,
            "remaining_amount": self.remaining_amount,
            "fee": self.fee,
            "state": self.state,
            "created_ts": self.created_ts,
            "updated_ts": self.updated_ts,
        }


class Fill(Value, frozen=True):
    """A push of the fill topic: one deal, unique by ``deal_no``."""

    deal_no: str
    order_no: str
    symbol: str
    side: str
    price: str
    quantity: str
    liquidity: str  # "maker" or "taker"
    order_type: str  # "market" or "limit"
    ts: int

    def wire(self) -> dict[str, Json]:
        return {
            "deal_no": self.deal_no,
            "order_no": self.order_no,
            "symbol": self.symbol,
            "side": self.side,
            "price": self.price,
            "quantity": self.quantity,
            "liquidity": self.liquidity,
            "order_type": self.order_type,
            "ts": self.ts,
        }


Update = OrderBook | DepthChart | Candle | Balances | TradeWindow | OrderChange | Fill


def newest_ts(update: Update) -> int:
    """The latest timestamp an update carries (0 when it carries none)."""
    if isinstance(update, TradeWindow):
        return update.trades[-1].ts if update.trades else 0
    if isinstance(update, Balances):
        return max([update.ts, *(b.updated_ts for b in update.balances.values())])
    if isinstance(update, OrderChange):
        return max(update.updated_ts, update.created_ts)
    if isinstance(update, Fill):
        return update.ts
    return update.exchange_ts or 0
