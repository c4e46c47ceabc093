"""The Python client of coinsuper-gateway.

- :class:`GatewayStream`: follow channels over Server-Sent Events or the
  WebSocket; reconnects and resumes by itself, every trade and fill once, in
  order; ``reset`` when the gateway cannot resume.
- :class:`GatewayClient`: the REST snapshots (order books, depth charts,
  candles, trades, the account) as typed methods, and streams with the same
  address and token.

It depends on httpx and httpx-ws only.
"""

from coinsuper_gateway_client._problems import GatewayError
from coinsuper_gateway_client._rest import (
    Assets,
    Balance,
    Candle,
    Depth,
    Envelope,
    Fill,
    GatewayClient,
    Order,
    OrderBook,
    Trade,
)
from coinsuper_gateway_client._stream import GatewayStream, StreamEvent, StreamRefused, sse_blocks

__version__ = "0.1.0"

__all__ = [
    "Assets",
    "Balance",
    "Candle",
    "Depth",
    "Envelope",
    "Fill",
    "GatewayClient",
    "GatewayError",
    "GatewayStream",
    "Order",
    "OrderBook",
    "StreamEvent",
    "StreamRefused",
    "Trade",
    "__version__",
    "sse_blocks",
]
