"""A small simulated market that speaks the exchange's payloads. Pure but for
its random generator: time is passed in.

Each symbol has a mid price that trades move: a buy takes the best ask and
nudges the mid up, a sell takes the best bid and nudges it down. Books are built
around the mid at each step (bids below asks), depth charts are cumulative, and
candles of every range are built from the trades. Payloads have the field names
and types of docs/upstream.md and ``tests/samples``.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from app.domain.channels import KLINE_RANGES, steps_for

TRADE_WINDOW = 50
BOOK_LEVELS = 15
DEPTH_LEVELS = 50


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str  # BTC_USD
    start_price: Decimal
    price_places: int  # decimals of prices
    qty_places: int = 4


DEFAULT_SYMBOLS = (
    SymbolSpec("BTC_USD", Decimal("6650.00"), 2),
    SymbolSpec("ETH_USD", Decimal("210.00"), 2),
    SymbolSpec("ETH_BTC", Decimal("0.03150000"), 8),
)


@dataclass(slots=True)
class SimTrade:
    price: Decimal
    quantity: Decimal
    action: str
    ts: int


@dataclass(slots=True)
class Candle:
    open_ts: int
    first: Decimal
    high: Decimal
    low: Decimal
    last: Decimal
    volume: Decimal


@dataclass
class SymbolState:
    spec: SymbolSpec
    mid: Decimal
    trades: deque[SimTrade] = field(default_factory=lambda: deque(maxlen=TRADE_WINDOW))
    # Every trade, when the market is asked to keep them (for soak tests).
    history: list[SimTrade] | None = None
    candles: dict[int, Candle] = field(default_factory=dict)


def _q(value: Decimal, places: int, rounding: str = ROUND_FLOOR) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=rounding)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Market:
    """Prices, trades, books and candles for a few symbols."""

    def __init__(
        self, specs: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS, seed: int | None = None
    ) -> None:
        self.rng = random.Random(seed)
        self.symbols = {spec.symbol: SymbolState(spec, spec.start_price) for spec in specs}

    # --- evolution ---------------------------------------------------------

    def tick(self, now_ms: int, trade_rate: float, dt_s: float) -> int:
        """Advance by ``dt_s`` seconds with about ``trade_rate`` trades per
        second per symbol; returns how many trades happened."""
        count = 0
        for state in self.symbols.values():
            expected = trade_rate * dt_s
            n = int(expected) + (1 if self.rng.random() < expected - int(expected) else 0)
            for _ in range(n):
                self._trade(state, now_ms)
                count += 1
            # A little drift with no trade keeps books moving.
            state.mid *= Decimal(1 + self.rng.gauss(0, 0.00005))
        return count

    def _trade(self, state: SymbolState, now_ms: int) -> None:
        spec = state.spec
        bid, ask = self._best(state, Decimal(1).scaleb(-spec.price_places))
        buy = self.rng.random() < 0.5
        price = ask if buy else bid
        quantity = _q(Decimal(self.rng.uniform(0.001, 1.0)), spec.qty_places)
        if quantity == 0:
            quantity = Decimal(1).scaleb(-spec.qty_places)
        # Repeat the last trade exactly now and then: the gateway must keep
        # equal trades apart.
        if state.trades and self.rng.random() < 0.05:
            last = state.trades[-1]
            trade = SimTrade(last.price, last.quantity, last.action, last.ts)
        else:
            trade = SimTrade(price, quantity, "BUY" if buy else "SELL", now_ms)
        state.trades.append(trade)
        if state.history is not None:
            state.history.append(trade)
        impact = Decimal(self.rng.uniform(0.00002, 0.0002))
        state.mid *= (1 + impact) if trade.action == "BUY" else (1 - impact)
        for range_ms in KLINE_RANGES.values():
            self._add_to_candle(state, range_ms, trade)

    def _add_to_candle(self, state: SymbolState, range_ms: int, trade: SimTrade) -> None:
        open_ts = trade.ts - trade.ts % range_ms
        candle = state.candles.get(range_ms)
        if candle is None or candle.open_ts != open_ts:
            state.candles[range_ms] = Candle(
                open_ts, trade.price, trade.price, trade.price, trade.price, trade.quantity
            )
            return
        candle.high = max(candle.high, trade.price)
        candle.low = min(candle.low, trade.price)
        candle.last = trade.price
        candle.volume += trade.quantity

    def _best(self, state: SymbolState, step: Decimal) -> tuple[Decimal, Decimal]:
        """Best bid and ask at a step: on the step grid, bid strictly below ask."""
        half_spread = state.mid * Decimal("0.0002")
        bid = ((state.mid - half_spread) / step).to_integral_value(ROUND_FLOOR) * step
        ask = ((state.mid + half_spread) / step).to_integral_value(ROUND_CEILING) * step
        if ask <= bid:
            ask = bid + step
        return bid, ask

    # --- payloads ----------------------------------------------------------

    def _price(self, state: SymbolState, value: Decimal) -> str:
        return format(_q(value, state.spec.price_places), "f")

    def orderbook(self, symbol: str, step_text: str, now_ms: int) -> bytes:
        state = self.symbols[symbol]
        step = Decimal(step_text)
        places = state.spec.price_places
        bid, ask = self._best(state, max(step, Decimal(1).scaleb(-places)))
        sides: dict[str, list[dict[str, str]]] = {"asks": [], "bids": []}
        for side, start, sign in (("asks", ask, 1), ("bids", bid, -1)):
            price = start
            for _ in range(BOOK_LEVELS):
                if price <= 0:
                    break
                quantity = _q(Decimal(self.rng.uniform(0.01, 1.0)), state.spec.qty_places)
                sides[side].append(
                    {
                        "amount": format(_q(price * quantity, 2), "f"),
                        "limitPrice": self._price(state, price),
                        "quantity": format(quantity, "f"),
                    }
                )
                price += sign * step * self.rng.randint(1, 3)
        return _dumps(
            {
                "asks": sides["asks"],
                "bids": sides["bids"],
                "limitSize": BOOK_LEVELS,
                "step": step_text,
                "symbol": symbol.replace("_", "/"),
                "timestamp": now_ms,
            }
        )

    def depth(self, symbol: str) -> bytes:
        state = self.symbols[symbol]
        places = state.spec.price_places
        tick = Decimal(1).scaleb(-places)
        bid, ask = self._best(state, tick)
        gap = max(_q(state.mid * Decimal("0.001"), places), tick)
        levels: dict[str, list[dict[str, str | None]]] = {"asks": [], "bids": []}
        for side, start, sign in (("asks", ask, 1), ("bids", bid, -1)):
            cumulative = Decimal(0)
            for index in range(DEPTH_LEVELS):
                price = start + sign * gap * index
                if price <= 0:
                    break
                if index or side == "asks":
                    cumulative += _q(Decimal(self.rng.uniform(0.1, 3.0)), 4)
                levels[side].append(
                    {
                        "price": self._price(state, price),
                        "quantity": format(_q(cumulative, 4), "f"),
                        "stepValue": None,
                    }
                )
        return _dumps(
            {
                "symbol": symbol.replace("_", "/"),
                "asks": levels["asks"],
                "bids": levels["bids"],
                "depthPercent": "0.01",
                "asksMinPrice": self._price(state, ask),
                "bidsMaxPrice": self._price(state, bid),
            }
        )

    def tickers(self, symbol: str) -> bytes:
        state = self.symbols[symbol]
        return _dumps(
            [
                {
                    "symbol": symbol.replace("_", "/"),
                    "price": self._price(state, trade.price),
                    "quantity": format(trade.quantity, "f"),
                    "action": trade.action,
                    "timestamp": trade.ts,
                }
                for trade in reversed(state.trades)
            ]
        )

    def kline(self, symbol: str, range_ms: int, now_ms: int) -> bytes:
        state = self.symbols[symbol]
        open_ts = now_ms - now_ms % range_ms
        candle = state.candles.get(range_ms)
        if candle is None or candle.open_ts != open_ts:
            price = _q(state.mid, state.spec.price_places)
            candle = Candle(open_ts, price, price, price, price, Decimal(0))
            state.candles[range_ms] = candle
        return _dumps(
            {
                "symbol": symbol.replace("_", "/"),
                "first": self._price(state, candle.first),
                "last": self._price(state, candle.last),
                "max": self._price(state, candle.high),
                "min": self._price(state, candle.low),
                "quantity": format(_q(candle.volume, 8), "f"),
                "timestamp": candle.open_ts,
            }
        )

    def steps(self, symbol: str) -> tuple[str, ...]:
        return steps_for(symbol)
