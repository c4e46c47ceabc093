"""The gateway's REST snapshots: :class:`GatewayClient`.

Every snapshot answer is an envelope (:class:`Envelope`): ``channel``,
``symbol``, ``seq``, ``exchange_ts``, ``received_ts``, ``stale`` and ``data``.
Prices, quantities and balances are strings equal to what the exchange sent:
``decimal.Decimal(level[0])`` is exact, ``float`` would not be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast
from urllib.parse import quote

import httpx

from coinsuper_gateway_client._problems import refused
from coinsuper_gateway_client._stream import GatewayStream

T = TypeVar("T")
Level = list[str]  # [price, quantity], exact decimal strings


class Envelope(TypedDict, Generic[T]):
    channel: str
    symbol: str | None
    seq: int
    exchange_ts: int | None
    received_ts: int | None
    stale: bool
    data: T


class OrderBook(TypedDict):
    step: str
    bids: list[Level]  # highest price first
    asks: list[Level]  # lowest price first


class Depth(TypedDict):
    depth_percent: str
    asks_min_price: str
    bids_max_price: str
    bids: list[Level]  # [price, cumulative quantity], best first
    asks: list[Level]


class Candle(TypedDict):
    range: str
    range_ms: int
    open_ts: int
    open: str
    high: str
    low: str
    close: str
    volume: str


class Trade(TypedDict):
    price: str
    quantity: str
    side: Literal["buy", "sell"]
    ts: int


class Balance(TypedDict):
    total: str
    available: str
    updated_ts: int


class Assets(TypedDict):
    user_no: str | None
    balances: dict[str, Balance]


class Order(TypedDict):
    order_no: str
    symbol: str
    side: Literal["buy", "sell"]
    price: str
    quantity: str
    remaining_quantity: str
    average_price: str
    amount: str
    remaining_amount: str
    fee: str
    state: str
    created_ts: int
    updated_ts: int


class Fill(TypedDict):
    deal_no: str
    order_no: str
    symbol: str
    side: Literal["buy", "sell"]
    price: str
    quantity: str
    liquidity: Literal["maker", "taker"]
    order_type: Literal["market", "limit"]
    ts: int


def _symbol(symbol: str) -> str:
    """A path segment: ``BTC_USD``, ``BTC-USD`` and ``BTC/USD`` all name the pair."""
    return quote(symbol, safe="")


class GatewayClient:
    """The REST calls a service needs, and streams with the same address and token.

        async with GatewayClient("http://gateway:8000", token="…") as gateway:
            book = await gateway.orderbook("BTC_USD", step="0.01")
            async with gateway.stream(["trades:BTC_USD"]) as stream:
                async for event in stream:
                    ...

    A refused request raises :class:`GatewayError` with the gateway's problem
    (``status`` 400 for a bad parameter, naming it and what is allowed; 401
    without a valid token on the account routes; 404 for a private feed that is
    not configured; 429 at a cap; 503, with ``retry_after``, while a channel
    has no data yet). ``wait_ms`` is how long the gateway may wait for a first
    push of a channel nobody asked for before (its default when ``None``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        # On every request, so that a client of the caller's own (``http``) sends it too.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._own = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    def stream(
        self,
        channels: Sequence[str],
        *,
        transport: Literal["sse", "websocket"] = "sse",
        last_event_id: str | None = None,
    ) -> GatewayStream:
        """Follow ``channels`` (see :class:`GatewayStream`), with this client's token."""
        return GatewayStream(
            self.base_url,
            channels,
            transport=transport,
            token=self.token,
            last_event_id=last_event_id,
        )

    async def get(self, path: str, params: Mapping[str, str | int | None] | None = None) -> Any:
        """The JSON answer of ``GET path`` (a problem raises :class:`GatewayError`)."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        response = await self.http.get(self.base_url + path, params=query, headers=self._auth)
        if response.status_code >= 400:
            raise refused(response)
        return response.json()

    # --- market data --------------------------------------------------------

    async def orderbook(
        self, symbol: str, step: str, *, wait_ms: int | None = None
    ) -> Envelope[OrderBook]:
        """The latest order book of ``symbol`` aggregated at ``step`` (``"0.01"``)."""
        answer = await self.get(f"/v1/orderbook/{_symbol(symbol)}", {"step": step, "wait": wait_ms})
        return cast(Envelope[OrderBook], answer)

    async def depth(self, symbol: str, *, wait_ms: int | None = None) -> Envelope[Depth]:
        """The latest depth chart (cumulative quantities)."""
        answer = await self.get(f"/v1/depth/{_symbol(symbol)}", {"wait": wait_ms})
        return cast(Envelope[Depth], answer)

    async def candle(
        self, symbol: str, range: str, *, wait_ms: int | None = None
    ) -> Envelope[Candle]:
        """The current candle of ``range`` (``"1m"`` … ``"1w"``)."""
        answer = await self.get(f"/v1/kline/{_symbol(symbol)}", {"range": range, "wait": wait_ms})
        return cast(Envelope[Candle], answer)

    async def candles(
        self, symbol: str, range: str, *, limit: int | None = None, wait_ms: int | None = None
    ) -> Envelope[list[Candle]]:
        """Candles seen since the gateway started, oldest first, the current one last."""
        params = {"range": range, "limit": limit, "wait": wait_ms}
        answer = await self.get(f"/v1/klines/{_symbol(symbol)}", params)
        return cast(Envelope[list[Candle]], answer)

    async def trades(
        self, symbol: str, *, limit: int | None = None, wait_ms: int | None = None
    ) -> Envelope[list[Trade]]:
        """Distinct trades, newest first."""
        params = {"limit": limit, "wait": wait_ms}
        answer = await self.get(f"/v1/trades/{_symbol(symbol)}", params)
        return cast(Envelope[list[Trade]], answer)

    async def snapshot(self, channel: str, *, wait_ms: int | None = None) -> Envelope[Any]:
        """The snapshot of a stream's channel name (``orderbook:BTC_USD:0.01``,
        ``depth:BTC_USD``, ``kline:BTC_USD:1m``, ``trades:BTC_USD``,
        ``assets``, ``orders``, ``fills``): what a stream opens with."""
        kind, _, rest = channel.partition(":")
        symbol, _, param = rest.partition(":")
        if kind == "orderbook" and param:
            return await self.orderbook(symbol, param, wait_ms=wait_ms)
        if kind == "depth" and symbol and not param:
            return await self.depth(symbol, wait_ms=wait_ms)
        if kind == "kline" and param:
            return await self.candle(symbol, param, wait_ms=wait_ms)
        if kind == "trades" and symbol and not param:
            return await self.trades(symbol, wait_ms=wait_ms)
        if channel == "assets":
            return await self.assets(wait_ms=wait_ms)
        if channel == "orders":
            return await self.orders(wait_ms=wait_ms)
        if channel == "fills":
            return await self.fills(wait_ms=wait_ms)
        raise ValueError(f"{channel!r} is not a channel name (see the gateway's /v1/channels)")

    # --- the account (the gateway's private feed; needs a token) -------------

    async def assets(self, *, wait_ms: int | None = None) -> Envelope[Assets]:
        """Balances per currency."""
        answer = await self.get("/v1/account/assets", {"wait": wait_ms})
        return cast(Envelope[Assets], answer)

    async def orders(
        self,
        *,
        state: Literal["new", "cancel"] | None = None,
        symbol: str | None = None,
        wait_ms: int | None = None,
    ) -> Envelope[list[Order]]:
        """The newest state of each order, most recently updated first."""
        params = {"state": state, "symbol": symbol, "wait": wait_ms}
        answer = await self.get("/v1/account/orders", params)
        return cast(Envelope[list[Order]], answer)

    async def fills(
        self, *, limit: int | None = None, wait_ms: int | None = None
    ) -> Envelope[list[Fill]]:
        """Fills, unique by deal number, newest first."""
        answer = await self.get("/v1/account/fills", {"limit": limit, "wait": wait_ms})
        return cast(Envelope[list[Fill]], answer)

    # --- operations -----------------------------------------------------------

    async def channels(self) -> dict[str, Any]:
        """``/v1/channels``: every channel's status, counts and link."""
        return cast(dict[str, Any], await self.get("/v1/channels"))

    async def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (every configured channel live)."""
        response = await self.http.get(self.base_url + "/readyz", headers=self._auth)
        return response.status_code == 200
