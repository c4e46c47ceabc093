"""A small simulated exchange that keeps a real order book per symbol and
speaks the exchange's payloads. Pure but for its random generator: time is
passed in.

Each symbol's book holds resting limit orders by price (in ticks of the
symbol's price precision, quantities in lots of its quantity precision, so
that all of it is integer arithmetic). Limit orders arrive around the mid at
distances spread from one tick to a few per cent of the price (log-uniform:
dense at the touch, thin far out), rest, and are cancelled; market orders take
the best levels, and a limit order that crosses trades at once. The trades
(the trades topic) are those matches, and the mid is the middle of the best
bid and ask, so it follows them. A pushed order book is the book aggregated
to the step's grid (top 15 levels a side), the depth chart its cumulative
form (50 levels), the candles the trades'. The demo account's orders rest in
the same book, and its fills are the matches that hit them
(:mod:`app.simulator.account`).

:class:`Activity` holds the rates. The default makes about a fifth of the top
15 levels of a side change between two pushes of a book, as on a quiet
exchange (``tests/test_simulator.py`` measures it; the README states it);
``Activity.busy`` is the busier setting. Payloads have the field names and
types of docs/upstream.md and ``tests/samples``.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from app.domain.channels import KLINE_RANGES, steps_for

TRADE_WINDOW = 50
BOOK_LEVELS = 15
DEPTH_LEVELS = 50
BIDS, ASKS = "bids", "asks"


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


@dataclass(frozen=True, slots=True)
class Activity:
    """How busy the market is, per symbol: limit orders arriving per second
    on each side, the share of resting orders cancelled per second, and how
    far out orders rest (a fraction of the price)."""

    arrivals_per_s: float = 4.0
    cancel_share_per_s: float = 1 / 90
    reach: float = 0.08
    resting: int = 360  # orders per side when the market opens (the steady state)

    def scaled(self, factor: float) -> Activity:
        """``factor`` times the arrivals and cancels (the same resting book)."""
        return Activity(
            self.arrivals_per_s * factor, self.cancel_share_per_s * factor, self.reach, self.resting
        )

    @classmethod
    def busy(cls) -> Activity:
        """Ten times the arrivals and cancels: most of the top levels change between pushes."""
        return cls().scaled(10)


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


@dataclass(slots=True)
class OwnFill:
    """A match that hit (or was made by) an order of the demo account."""

    order_no: str
    price: Decimal
    quantity: Decimal
    taker: bool
    ts: int


@dataclass
class SymbolState:
    spec: SymbolSpec
    bids: dict[int, int] = field(default_factory=dict)  # price tick → lots resting
    asks: dict[int, int] = field(default_factory=dict)
    # The demo account's resting orders at each tick of each side: order no → lots.
    own: dict[str, dict[int, dict[str, int]]] = field(default_factory=lambda: {BIDS: {}, ASKS: {}})
    trades: deque[SimTrade] = field(default_factory=lambda: deque(maxlen=TRADE_WINDOW))
    # Every trade, when the market is asked to keep them (for soak tests).
    history: list[SimTrade] | None = None
    candles: dict[int, Candle] = field(default_factory=dict)

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.spec.price_places)

    @property
    def lot(self) -> Decimal:
        return Decimal(1).scaleb(-self.spec.qty_places)

    def side(self, side: str) -> dict[int, int]:
        """The levels of ``side`` (BIDS or ASKS): price tick → lots."""
        return self.bids if side == BIDS else self.asks

    def best(self, side: str) -> int | None:
        levels = self.side(side)
        if not levels:
            return None
        return max(levels) if side == BIDS else min(levels)

    @property
    def mid(self) -> Decimal:
        """The middle of the best bid and ask (the start price on an empty side)."""
        bid, ask = self.best(BIDS), self.best(ASKS)
        if bid is None or ask is None:
            return self.spec.start_price
        return (Decimal(bid + ask) / 2) * self.tick


def _q(value: Decimal, places: int, rounding: str = ROUND_FLOOR) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=rounding)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Market:
    """Order books, trades and candles for a few symbols."""

    def __init__(
        self,
        specs: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS,
        seed: int | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.activity = activity or Activity()
        self.symbols = {spec.symbol: SymbolState(spec) for spec in specs}
        self.own_fills: list[OwnFill] = []  # for the demo account, drained by it
        self.now_ms = 0
        for state in self.symbols.values():
            self._open(state)

    # --- evolution ---------------------------------------------------------

    def _open(self, state: SymbolState) -> None:
        """Fill an empty book to its steady state around the start price."""
        centre = int(state.spec.start_price / state.tick)
        for side, sign in ((BIDS, -1), (ASKS, 1)):
            levels = state.side(side)
            for _ in range(self.activity.resting):
                tick = centre + sign * self._distance(state)
                levels[tick] = levels.get(tick, 0) + self._lots(state)

    def _distance(self, state: SymbolState) -> int:
        """Ticks from the mid: log-uniform from 1 to ``reach`` of the price."""
        far = max(2.0, float(state.mid / state.tick) * self.activity.reach)
        return max(1, int(math.exp(self.rng.uniform(0.0, math.log(far)))))

    def _lots(self, state: SymbolState) -> int:
        return max(1, int(self.rng.uniform(0.001, 1.0) / float(state.lot)))

    def _count(self, expected: float) -> int:
        whole = int(expected)
        return whole + (1 if self.rng.random() < expected - whole else 0)

    def tick(self, now_ms: int, trade_rate: float, dt_s: float) -> int:
        """Advance by ``dt_s`` seconds: limit orders arrive and are
        cancelled, and about ``trade_rate`` market orders per second per
        symbol take the book; returns how many trades happened."""
        self.now_ms = now_ms
        count = 0
        activity = self.activity
        for state in self.symbols.values():
            for side in (BIDS, ASKS):
                for _ in range(self._count(activity.arrivals_per_s * dt_s)):
                    count += self._arrive(state, side)
                levels = state.side(side)
                for _ in range(self._count(len(levels) * activity.cancel_share_per_s * dt_s)):
                    self._cancel_some(state, side)
            for _ in range(self._count(trade_rate * dt_s)):
                taker = ASKS if self.rng.random() < 0.5 else BIDS  # a buy takes asks
                count += self._take(state, taker, self._lots(state), None, None)
        return count

    def _arrive(self, state: SymbolState, side: str) -> int:
        """A limit order on ``side`` around the mid; one that crosses trades."""
        mid = int(state.mid / state.tick)
        distance = self._distance(state)
        tick = mid - distance if side == BIDS else mid + distance
        if tick <= 0:
            return 0
        return self.place(state, side, tick, self._lots(state), None)

    def _cancel_some(self, state: SymbolState, side: str) -> None:
        """Part or all of the others' quantity at a random level leaves."""
        levels = state.side(side)
        if not levels:
            return
        tick = self.rng.choice(list(levels))
        own = sum(state.own[side].get(tick, {}).values())
        others = levels[tick] - own
        if others <= 0:
            return
        gone = others if self.rng.random() < 0.6 else max(1, int(others * self.rng.random()))
        self._reduce(levels, tick, gone)

    @staticmethod
    def _reduce(levels: dict[int, int], tick: int, lots: int) -> None:
        left = levels[tick] - lots
        if left > 0:
            levels[tick] = left
        else:
            del levels[tick]

    def place(self, state: SymbolState, side: str, tick: int, lots: int, owner: str | None) -> int:
        """A limit order: what crosses the other side trades at once (as a
        taker), the rest rests (an account's order under ``owner``). Returns
        how many trades it made."""
        other = ASKS if side == BIDS else BIDS
        best = state.best(other)
        trades = 0
        if best is not None and (tick >= best if side == BIDS else tick <= best):
            trades, lots = self._match(state, other, lots, owner, tick)
        if lots > 0:
            levels = state.side(side)
            levels[tick] = levels.get(tick, 0) + lots
            if owner is not None:
                resting = state.own[side].setdefault(tick, {})
                resting[owner] = resting.get(owner, 0) + lots
        return trades

    def take(self, symbol: str, buy: bool, quantity: Decimal, owner: str, limit: Decimal) -> int:
        """A market order of the account's, not past ``limit`` (the price its
        funds were reserved at): returns how many trades it made."""
        state = self.symbols[symbol]
        lots = int(quantity / state.lot)
        return self._take(state, ASKS if buy else BIDS, lots, owner, int(limit / state.tick))

    def _take(
        self, state: SymbolState, side: str, lots: int, owner: str | None, limit: int | None
    ) -> int:
        return self._match(state, side, lots, owner, limit)[0]

    def _match(
        self, state: SymbolState, side: str, lots: int, owner: str | None, limit: int | None
    ) -> tuple[int, int]:
        """Take up to ``lots`` from the best levels of ``side`` (not past
        ``limit``): the trades, and the lots left untaken."""
        levels = state.side(side)
        action = "BUY" if side == ASKS else "SELL"
        trades = 0
        while lots > 0 and levels:
            best = state.best(side)
            assert best is not None
            if limit is not None and (best > limit if side == ASKS else best < limit):
                break
            taken = min(lots, levels[best])
            # The others' orders at a level came first; the account's last.
            own = state.own[side].get(best, {})
            others = levels[best] - sum(own.values())
            price = Decimal(best) * state.tick
            from_others = min(taken, others)
            if from_others:
                # Now and then two resting orders of one size: two equal trades.
                if from_others % 2 == 0 and self.rng.random() < 0.05:
                    half = Decimal(from_others // 2) * state.lot
                    self._trade(state, price, half, action)
                    self._trade(state, price, half, action)
                    trades += 2
                else:
                    self._trade(state, price, Decimal(from_others) * state.lot, action)
                    trades += 1
            rest = taken - from_others
            for order_no in list(own):
                if rest <= 0:
                    break
                hit = min(rest, own[order_no])
                rest -= hit
                quantity = Decimal(hit) * state.lot
                self._trade(state, price, quantity, action)
                trades += 1
                self.own_fills.append(OwnFill(order_no, price, quantity, False, self.now_ms))
                own[order_no] -= hit
                if not own[order_no]:
                    del own[order_no]
            if not own:
                state.own[side].pop(best, None)
            if owner is not None:
                self.own_fills.append(
                    OwnFill(owner, price, Decimal(taken) * state.lot, True, self.now_ms)
                )
            self._reduce(levels, best, taken)
            lots -= taken
        return trades, lots

    def cancel_own(self, symbol: str, order_no: str) -> None:
        """The account's order leaves the book."""
        state = self.symbols[symbol]
        for side in (BIDS, ASKS):
            levels = state.side(side)
            for tick, resting in list(state.own[side].items()):
                lots = resting.pop(order_no, 0)
                if lots:
                    self._reduce(levels, tick, lots)
                if not resting:
                    del state.own[side][tick]

    def touch(self, symbol: str, buy: bool) -> Decimal:
        """A price for the account's limit order: at the best of its side, or
        one tick better where the spread leaves room (it is hit first)."""
        state = self.symbols[symbol]
        side = BIDS if buy else ASKS
        best, other = state.best(side), state.best(ASKS if buy else BIDS)
        if best is None or other is None:
            return _q(state.mid, state.spec.price_places)
        better = best + 1 if buy else best - 1
        tick = better if (buy and better < other) or (not buy and better > other) else best
        if self.rng.random() < 0.5:
            tick = best
        return Decimal(tick) * state.tick

    def _trade(self, state: SymbolState, price: Decimal, quantity: Decimal, action: str) -> None:
        trade = SimTrade(price, quantity, action, self.now_ms)
        state.trades.append(trade)
        if state.history is not None:
            state.history.append(trade)
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

    # --- payloads ----------------------------------------------------------

    def _price(self, state: SymbolState, value: Decimal) -> str:
        return format(_q(value, state.spec.price_places), "f")

    def levels(self, symbol: str, side: str, step_ticks: int, count: int) -> list[tuple[int, int]]:
        """The book's ``side`` aggregated to a grid of ``step_ticks``: bids
        down to their bucket, asks up to theirs; the best ``count``, best first."""
        state = self.symbols[symbol]
        levels = state.side(side)
        out: list[tuple[int, int]] = []
        for tick in sorted(levels, reverse=side == BIDS):
            bucket = (tick // step_ticks if side == BIDS else -(-tick // step_ticks)) * step_ticks
            if out and out[-1][0] == bucket:
                out[-1] = (bucket, out[-1][1] + levels[tick])
            elif len(out) == count:
                break
            else:
                out.append((bucket, levels[tick]))
        return out

    def orderbook(self, symbol: str, step_text: str, now_ms: int) -> bytes:
        state = self.symbols[symbol]
        step_ticks = max(1, int(Decimal(step_text) / state.tick))
        sides: dict[str, list[dict[str, str]]] = {}
        for side in (ASKS, BIDS):
            sides[side] = []
            for tick, lots in self.levels(symbol, side, step_ticks, BOOK_LEVELS):
                price = Decimal(tick) * state.tick
                quantity = Decimal(lots) * state.lot
                sides[side].append(
                    {
                        "amount": format(_q(price * quantity, 2), "f"),
                        "limitPrice": self._price(state, price),
                        "quantity": format(quantity, "f"),
                    }
                )
        return _dumps(
            {
                "asks": sides[ASKS],
                "bids": sides[BIDS],
                "limitSize": BOOK_LEVELS,
                "step": step_text,
                "symbol": symbol.replace("_", "/"),
                "timestamp": now_ms,
            }
        )

    def depth(self, symbol: str) -> bytes:
        """Cumulative quantities in 50 bins a side, a thousandth of the price wide."""
        state = self.symbols[symbol]
        gap = max(int(state.mid * Decimal("0.001") / state.tick), 1)
        out: dict[str, list[dict[str, str | None]]] = {ASKS: [], BIDS: []}
        for side, sign in ((ASKS, 1), (BIDS, -1)):
            levels = state.side(side)
            start = state.best(side)
            if start is None:
                continue
            ordered = sorted(levels, reverse=side == BIDS)
            cumulative, index = 0, 0
            for n in range(DEPTH_LEVELS):
                edge = start + sign * gap * n
                if edge <= 0:
                    break
                while index < len(ordered) and (
                    ordered[index] <= edge if sign > 0 else ordered[index] >= edge
                ):
                    cumulative += levels[ordered[index]]
                    index += 1
                out[side].append(
                    {
                        "price": self._price(state, Decimal(edge) * state.tick),
                        "quantity": format(Decimal(cumulative) * state.lot, "f"),
                        "stepValue": None,
                    }
                )
        bid, ask = state.best(BIDS) or 0, state.best(ASKS) or 0
        return _dumps(
            {
                "symbol": symbol.replace("_", "/"),
                "asks": out[ASKS],
                "bids": out[BIDS],
                "depthPercent": "0.01",
                "asksMinPrice": self._price(state, Decimal(ask) * state.tick),
                "bidsMaxPrice": self._price(state, Decimal(bid) * state.tick),
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
