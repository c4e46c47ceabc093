"""The simulated exchange's demo account: orders placed in and cancelled from
the simulated market's book, and filled when the market's matching hits them
(or, market orders, when they take the book), pushed on the private topics as
the exchange would (docs/upstream.md), including its warned-of faults on demand.

The order topic pushes only creation (``NEW``) and cancellation (``CANCEL``);
balances are JSON numbers with 30 decimals; fills carry ``utcDeal`` as a string.
:class:`PrivateFaults` drops, duplicates and reorders pushes at a given rate, and
keeps what was really sent so that tests can compare.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass, field
from decimal import Context, Decimal

from app.simulator.market import Market, OwnFill

PLACES = Decimal(1).scaleb(-30)
WIDE = Context(prec=80)  # 30 decimals of a five-digit balance need more than 28 digits


@dataclass(slots=True)
class Order:
    order_no: str
    symbol: str  # BTC_USD
    action: str
    order_type: str  # LMT or MKT
    price: Decimal
    quantity: Decimal
    remaining: Decimal
    created_ts: int
    updated_ts: int
    state: str = "NEW"
    filled_amount: Decimal = Decimal(0)


@dataclass
class DemoTrader:
    """Places, cancels and fills the demo account's orders."""

    market: Market
    email: str
    user_no: str
    rng: random.Random
    balances: dict[str, list[Decimal]] = field(
        default_factory=dict
    )  # currency → [total, available]
    orders: dict[str, Order] = field(default_factory=dict)
    next_no: int = 1616392747273428993
    next_deal: int = 1616392748072460289

    def __post_init__(self) -> None:
        if not self.balances:
            self.balances = {
                "BTC": [Decimal("1.306763122563248000000000000000"), Decimal("1.306763122563248")],
                "ETH": [Decimal("12.5"), Decimal("12.5")],
                "USD": [Decimal("32260.05825788"), Decimal("32260.05825788")],
            }

    def step(self, now_ms: int, dt_s: float) -> list[tuple[str, bytes]]:
        """Advance by ``dt_s`` seconds; returns (kind, payload) pushes with kind
        one of ``assets``, ``orders``, ``fills``."""
        pushes: list[tuple[str, bytes]] = self._hits(now_ms)
        if self.rng.random() < 0.5 * dt_s:
            pushes += self._place(now_ms, market_order=self.rng.random() < 0.3)
        open_orders = [o for o in self.orders.values() if o.state == "NEW" and o.remaining > 0]
        if open_orders and self.rng.random() < 0.15 * dt_s:
            pushes += self._cancel(self.rng.choice(open_orders), now_ms)
        return pushes

    # --- order life --------------------------------------------------------

    def _place(self, now_ms: int, *, market_order: bool) -> list[tuple[str, bytes]]:
        symbol = self.rng.choice(["BTC_USD", "BTC_USD", "ETH_USD", "ETH_BTC"])
        state = self.market.symbols[symbol]
        places = state.spec.price_places
        buy = self.rng.random() < 0.5
        # A market order is reserved at a price well past the touch; a limit
        # order joins (or improves) the best price of its side.
        if market_order:
            price = (state.mid * Decimal("1.01" if buy else "0.99")).quantize(state.tick)
        else:
            price = self.market.touch(symbol, buy)
        price = price.quantize(Decimal(1).scaleb(-places))
        quantity = Decimal(self.rng.uniform(0.001, 0.2)).quantize(Decimal("0.0001"))
        if quantity == 0:
            quantity = Decimal("0.0001")
        base, quote = symbol.split("_")
        needed = quantity * price if buy else quantity
        if self.balances[quote if buy else base][1] < needed:
            return []  # the account cannot afford it; no order
        self.next_no += 1
        order = Order(
            str(self.next_no),
            symbol,
            "BUY" if buy else "SELL",
            "MKT" if market_order else "LMT",
            price,
            quantity,
            quantity,
            now_ms,
            now_ms,
        )
        self.orders[order.order_no] = order
        self._reserve(order, order.quantity)
        pushes = [("orders", self._order_payload(order)), ("assets", self._assets_payload(now_ms))]
        self.market.now_ms = now_ms
        if market_order:  # not past the price it was reserved at
            self.market.take(symbol, buy, quantity, order.order_no, price)
        else:
            tick = int(price / state.tick)
            self.market.place(
                state, "bids" if buy else "asks", tick, int(quantity / state.lot), order.order_no
            )
        pushes += self._hits(now_ms)
        if market_order and order.remaining > 0:
            pushes += self._cancel(order, now_ms)  # what the book could not fill
        if len(self.orders) > 500:  # forget the oldest closed orders (open ones stay in the book)
            for order_no in [
                n for n, o in self.orders.items() if o.state != "NEW" or o.remaining <= 0
            ][:100]:
                del self.orders[order_no]
        return pushes

    def _hits(self, now_ms: int) -> list[tuple[str, bytes]]:
        """Fills of the account's orders that the market's matching made."""
        fills, self.market.own_fills = self.market.own_fills, []
        pushes: list[tuple[str, bytes]] = []
        for fill in fills:
            order = self.orders.get(fill.order_no)
            if order is not None and order.state == "NEW" and order.remaining > 0:
                pushes += self._fill(order, fill, now_ms)
        return pushes

    def _cancel(self, order: Order, now_ms: int) -> list[tuple[str, bytes]]:
        self.market.cancel_own(order.symbol, order.order_no)
        order.state = "CANCEL"
        order.updated_ts = now_ms
        self._reserve(order, -order.remaining)
        return [("orders", self._order_payload(order)), ("assets", self._assets_payload(now_ms))]

    def _fill(self, order: Order, fill: OwnFill, now_ms: int) -> list[tuple[str, bytes]]:
        quantity = min(fill.quantity, order.remaining)
        order.remaining -= quantity
        order.filled_amount += quantity * fill.price
        self._settle(order, quantity, fill.price)
        self.next_deal += 1
        deal = {
            "action": order.action,
            "dealNo": str(self.next_deal),
            "matchType": "TAKER" if fill.taker else "MAKER",
            "orderNo": order.order_no,
            "orderType": order.order_type,
            "price": format(fill.price.quantize(order.price), "f"),
            "quantity": format(quantity, "f"),
            "symbol": order.symbol.replace("_", "/"),
            "utcDeal": str(now_ms),
        }
        return [("fills", json.dumps(deal).encode()), ("assets", self._assets_payload(now_ms))]

    # --- balances ----------------------------------------------------------

    def _currencies(self, order: Order) -> tuple[str, str]:
        base, quote = order.symbol.split("_")
        return base, quote

    def _reserve(self, order: Order, quantity: Decimal) -> None:
        """Hold (or, negative, release) what an open order may spend."""
        base, quote = self._currencies(order)
        if order.action == "BUY":
            self.balances[quote][1] -= quantity * order.price
        else:
            self.balances[base][1] -= quantity

    def _settle(self, order: Order, quantity: Decimal, price: Decimal) -> None:
        base, quote = self._currencies(order)
        cost = quantity * price
        if order.action == "BUY":
            # Reserved at the order's price; what it did not cost is available again.
            self.balances[quote][1] += quantity * (order.price - price)
            self.balances[quote][0] -= cost
            self.balances[base][0] += quantity
            self.balances[base][1] += quantity
        else:
            self.balances[base][0] -= quantity
            self.balances[quote][0] += cost
            self.balances[quote][1] += cost

    # --- payloads ----------------------------------------------------------

    def _order_payload(self, order: Order) -> bytes:
        average = (
            (order.filled_amount / (order.quantity - order.remaining))
            if order.remaining < order.quantity
            else Decimal(0)
        )
        return json.dumps(
            {
                "symbol": order.symbol.replace("_", "/"),
                "orderNo": order.order_no,
                "action": order.action,
                "quantity": format(order.quantity, "f"),
                "quantityRemaining": format(order.remaining, "f"),
                "priceLimit": format(order.price, "f"),
                "priceAverage": format(average.quantize(order.price), "f"),
                "amount": format((order.quantity * order.price).quantize(Decimal("0.01")), "f"),
                "amountRemaining": format(
                    (order.remaining * order.price).quantize(Decimal("0.01")), "f"
                ),
                "fee": "0",
                "state": order.state,
                "utcCreate": order.created_ts,
                "utcUpdate": order.updated_ts,
            }
        ).encode()

    def _assets_payload(self, now_ms: int) -> bytes:
        """Balances as JSON numbers with 30 decimals, as the exchange sends them."""
        entries = [
            f'{{"available":{available.quantize(PLACES, context=WIDE):f},"currency":"{currency}",'
            f'"total":{total.quantize(PLACES, context=WIDE):f},"utcUpdate":{now_ms}}}'
            for currency, (total, available) in sorted(self.balances.items())
        ]
        return (
            f'{{"asset":[{",".join(entries)}],"email":{json.dumps(self.email)},'
            f'"timestamp":{now_ms},"userNo":"{self.user_no}"}}'
        ).encode()


@dataclass
class PrivateFaults:
    """Drops, duplicates and reorders pushes at ``rate`` (each), keeping what
    was really sent."""

    rate: float
    rng: random.Random
    held: tuple[str, bytes] | None = None
    sent: deque[tuple[str, bytes]] = field(default_factory=lambda: deque(maxlen=100_000))

    def apply(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """What to publish now for one push."""
        out: list[tuple[str, bytes]] = []
        roll = self.rng.random()
        if roll < self.rate:
            pass  # dropped
        elif roll < 2 * self.rate:
            out += [(topic, payload), (topic, payload)]  # duplicated
        elif roll < 3 * self.rate and self.held is None:
            self.held = (topic, payload)  # sent after the next one
            return []
        else:
            out.append((topic, payload))
        if self.held is not None and out:
            out.append(self.held)
            self.held = None
        self.sent.extend(out)
        return out
