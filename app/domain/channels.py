"""Channel names: what clients ask for, and the upstream topic behind each.

A channel is one piece of upstream state (see docs/api.md): ``depth:BTC_USD``,
``orderbook:BTC_USD:0.01``, ``kline:BTC_USD:1m``, ``trades:BTC_USD``, and the
private ``assets``, ``orders``, ``fills``. Parsing is strict and every failure is
a :class:`InvalidInput` that names what is allowed, so the HTTP side can answer
it as a ``400`` problem without knowing the rules itself.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from app.domain.errors import InvalidInput, TooMany


class Kind(StrEnum):
    """The kinds of channel, named as in channel names and SSE event names."""

    DEPTH = "depth"
    ORDERBOOK = "orderbook"
    KLINE = "kline"
    TRADES = "trades"
    ASSETS = "assets"
    ORDERS = "orders"
    FILLS = "fills"


PRIVATE_KINDS = (Kind.ASSETS, Kind.ORDERS, Kind.FILLS)
# Channels whose state is replaced by every push; the others are logs or maps
# whose every new item is an event of its own.
SNAPSHOT_KINDS = frozenset({Kind.DEPTH, Kind.ORDERBOOK, Kind.KLINE, Kind.ASSETS})
# The snapshot kinds whose events a stream may follow as diffs (books=diff).
BOOK_KINDS = frozenset({Kind.ORDERBOOK, Kind.DEPTH})

# Event names on streams, by channel kind (docs/api.md, "Streams").
EVENT_NAMES: dict[Kind, str] = {
    Kind.DEPTH: "depth",
    Kind.ORDERBOOK: "orderbook",
    Kind.KLINE: "kline",
    Kind.TRADES: "trade",
    Kind.ASSETS: "assets",
    Kind.ORDERS: "order",
    Kind.FILLS: "fill",
}

# Documented push interval of each public kind, in seconds (docs/upstream.md): the
# base for the staleness threshold.
PUSH_INTERVAL_S: dict[Kind, float] = {
    Kind.DEPTH: 1.0,
    Kind.ORDERBOOK: 2.0,
    Kind.KLINE: 2.0,
    Kind.TRADES: 2.0,
}

KLINE_RANGES: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "1w": 604_800_000,
}
RANGE_BY_MS = {ms: name for name, ms in KLINE_RANGES.items()}

FIAT_STEPS = ("1.0", "0.1", "0.01")
CRYPTO_STEPS = ("0.0001", "0.000001", "0.00000001")
# Quote currencies whose order books use the fiat steps; any other quote uses the
# crypto steps (docs/upstream.md, "Topics").
FIAT_QUOTES = frozenset({"USD", "EUR", "GBP", "JPY", "KRW", "CNY", "HKD", "AUD", "CAD", "SGD"})

_SYMBOL_RE = re.compile(r"^([A-Za-z0-9]{2,12})[_/\-]([A-Za-z0-9]{2,12})\Z")


@functools.lru_cache(maxsize=4096)  # pure, and on every request's path
def normalize_symbol(text: str) -> str:
    """Return the topic form ``BTC_USD`` of any accepted spelling of a symbol."""
    match = _SYMBOL_RE.match(text.strip())
    if match is None:
        raise InvalidInput(
            "symbol",
            f"'{_clip(text)}' is not a symbol",
            "a base and a quote currency joined by '_', '-' or '/', e.g. BTC_USD, btc-usd, BTC/USD",
        )
    return f"{match.group(1).upper()}_{match.group(2).upper()}"


def display_symbol(symbol: str) -> str:
    """``BTC_USD`` → ``BTC/USD``, the spelling of payloads and answers."""
    return symbol.replace("_", "/")


def steps_for(symbol: str) -> tuple[str, ...]:
    """The order-book steps the exchange offers for a symbol's quote currency."""
    quote = symbol.split("_", 1)[1]
    return FIAT_STEPS if quote in FIAT_QUOTES else CRYPTO_STEPS


@functools.lru_cache(maxsize=4096)
def normalize_step(symbol: str, text: str) -> str:
    """Return the exchange's own spelling of a step given by value (``1``, ``0.10``)."""
    allowed = steps_for(symbol)
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        value = None
    for step in allowed:
        if value is not None and value.is_finite() and value == Decimal(step):
            return step
    raise InvalidInput(
        "step",
        f"'{_clip(text)}' is not an order-book step of {display_symbol(symbol)}",
        "one of " + ", ".join(allowed),
    )


@functools.lru_cache(maxsize=1024)
def normalize_range(text: str) -> str:
    """Return the candle range label for a label or a length in milliseconds."""
    text = text.strip()
    if text in KLINE_RANGES:
        return text
    # Length first: int() refuses more than 4,300 digits (and it would be a 500).
    if len(text) <= 18 and text.isascii() and text.isdigit() and int(text) in RANGE_BY_MS:
        return RANGE_BY_MS[int(text)]
    raise InvalidInput(
        "range",
        f"'{_clip(text)}' is not a candle range",
        "one of " + ", ".join(KLINE_RANGES),
    )


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed, canonical channel name."""

    kind: Kind
    symbol: str | None = None  # topic form, BTC_USD
    param: str | None = None  # order-book step or candle range label
    # The canonical name, made once: every lookup by channel (the store, demand,
    # the fan-out, each REST request) reads it.
    name: str = field(init=False, repr=False, compare=False)
    # ``BTC/USD``, made once too: ingest checks every payload's symbol against it.
    display_symbol: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = ":".join(p for p in (self.kind.value, self.symbol, self.param) if p)
        object.__setattr__(self, "name", name)
        shown = display_symbol(self.symbol) if self.symbol else None
        object.__setattr__(self, "display_symbol", shown)

    @property
    def is_private(self) -> bool:
        return self.kind in PRIVATE_KINDS

    @property
    def event_name(self) -> str:
        return EVENT_NAMES[self.kind]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def orderbook(cls, symbol: str, step: str) -> Channel:
        sym = normalize_symbol(symbol)
        return cls(Kind.ORDERBOOK, sym, normalize_step(sym, step))

    @classmethod
    def kline(cls, symbol: str, range_: str) -> Channel:
        return cls(Kind.KLINE, normalize_symbol(symbol), normalize_range(range_))

    @classmethod
    def depth(cls, symbol: str) -> Channel:
        return cls(Kind.DEPTH, normalize_symbol(symbol))

    @classmethod
    def trades(cls, symbol: str) -> Channel:
        return cls(Kind.TRADES, normalize_symbol(symbol))


def parse_channel(text: str) -> Channel:
    """Parse one channel name, accepting every symbol spelling docs/api.md allows."""
    parts = text.strip().split(":")
    try:
        kind = Kind(parts[0].lower())
    except ValueError:
        raise InvalidInput(
            "channels",
            f"'{_clip(parts[0])}' is not a channel kind",
            "one of " + ", ".join(k.value for k in Kind),
        ) from None
    expected = {Kind.ORDERBOOK: 3, Kind.KLINE: 3, Kind.DEPTH: 2, Kind.TRADES: 2}.get(kind, 1)
    if len(parts) != expected:
        shape = {
            3: f"{kind.value}:SYMBOL:{'STEP' if kind is Kind.ORDERBOOK else 'RANGE'}",
            2: f"{kind.value}:SYMBOL",
            1: kind.value,
        }[expected]
        raise InvalidInput(
            "channels", f"'{_clip(text)}' is not a channel name", f"the form {shape}"
        )
    if kind is Kind.ORDERBOOK:
        return Channel.orderbook(parts[1], parts[2])
    if kind is Kind.KLINE:
        return Channel.kline(parts[1], parts[2])
    if kind in (Kind.DEPTH, Kind.TRADES):
        return Channel(kind, normalize_symbol(parts[1]))
    return Channel(kind)


def parse_channel_list(text: str, *, cap: int) -> list[Channel]:
    """Parse ``a,b,c`` into distinct channels, in the order given, at most ``cap``."""
    names = [part for part in text.split(",") if part.strip()]
    if not names:
        raise InvalidInput("channels", "no channel was named", "a comma-separated list of channels")
    channels = list(dict.fromkeys(parse_channel(name) for name in names))
    if len(channels) > cap:
        raise TooMany("channels per stream", f"{len(channels)} channels were asked for", cap)
    return channels


@dataclass(frozen=True, slots=True)
class TopicTemplates:
    """Upstream sub-topic templates; configurable because the exchange's own
    document disagrees with itself about the private prefixes."""

    depth: str = "/api/ws/v1/market/depth/{symbol}"
    orderbook: str = "/api/ws/v1/market/orderBook/{symbol}/{step}"
    kline: str = "/api/ws/v1/market/kline/{symbol}/{range_ms}"
    trades: str = "/api/ws/v1/market/tickers/{symbol}"
    assets: str = "/api/ws/personal/v1/asset/change/{email}"
    orders: str = "/ws/personal/v1/order/change/{email}"
    fills: str = "/ws/personal/v1/trade/change/{email}"

    def parse(self, env: str, topic: str) -> Channel | None:
        """The channel a full topic belongs to, or None (the inverse of :meth:`topic`)."""
        if not topic.startswith(env):
            return None
        sub = topic[len(env) :]
        fields = {
            "symbol": r"(?P<symbol>[A-Z0-9]{2,12}_[A-Z0-9]{2,12})",
            "step": r"(?P<step>[0-9.]+)",
            "range_ms": r"(?P<range_ms>[0-9]+)",
            "email": r"(?P<email>[^/]+)",
        }
        for kind in Kind:
            template: str = getattr(self, kind.value)
            pattern = re.escape(template)
            for name, group in fields.items():
                pattern = pattern.replace(re.escape("{" + name + "}"), group)
            match = re.fullmatch(pattern, sub)
            if match is None:
                continue
            values = match.groupdict()
            try:
                if kind is Kind.ORDERBOOK:
                    return Channel.orderbook(values["symbol"], values["step"])
                if kind is Kind.KLINE:
                    return Channel.kline(values["symbol"], values["range_ms"])
                if kind in (Kind.DEPTH, Kind.TRADES):
                    return Channel(kind, normalize_symbol(values["symbol"]))
                return Channel(kind)
            except InvalidInput:
                return None
        return None

    def topic(self, env: str, channel: Channel, email: str = "") -> str:
        """The full upstream topic of a channel: ``$env`` followed by the sub-topic."""
        template: str = getattr(self, channel.kind.value)
        range_ms = (
            KLINE_RANGES[channel.param] if channel.kind is Kind.KLINE and channel.param else 0
        )
        return env + template.format(
            symbol=channel.symbol or "", step=channel.param or "", range_ms=range_ms, email=email
        )


def _clip(text: str, limit: int = 64) -> str:
    """Client input echoed in an answer is cut short, so an answer stays small."""
    return text if len(text) <= limit else text[:limit] + "…"
