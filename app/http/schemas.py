"""The shapes of answers, for the OpenAPI description.

Answers are encoded once by the store, not through these models; the models
describe those bytes so that clients, and schemathesis in the tests, can check
them. Decimals are strings equal to what the exchange sent.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.http.problems import PROBLEM_MEDIA_TYPE

Decimal = str
Level = list[Decimal]  # [price, quantity]
DataT = TypeVar("DataT")
# The answers' and events' models forbid other fields, so that the tests
# (schemathesis on REST, tests/frames.py on the streams) catch an answer that
# grew a field the documents lack.
STRICT = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """An RFC 9457 problem."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    parameter: str | None = Field(None, description="the parameter that was wrong")
    allowed: str | None = Field(None, description="what the parameter allows")
    limit: str | None = Field(None, description="the cap that was reached")
    cap: int | None = Field(None, description="its value")


class Envelope(BaseModel, Generic[DataT]):
    """Every snapshot answer."""

    model_config = STRICT

    channel: str = Field(examples=["orderbook:BTC_USD:0.01"])
    symbol: str | None = Field(examples=["BTC/USD"])
    seq: int = Field(description="grows by one with every accepted update of the channel")
    exchange_ts: int | None = Field(
        description="upstream timestamp (ms), where the payload has one"
    )
    received_ts: int | None = Field(description="when the gateway received the update (ms)")
    stale: bool = Field(description="no update within the configured multiple of the push interval")
    data: DataT


class OrderBook(BaseModel):
    model_config = STRICT
    step: Decimal
    bids: list[Level] = Field(description="[price, quantity], highest price first")
    asks: list[Level] = Field(description="[price, quantity], lowest price first")


class Depth(BaseModel):
    model_config = STRICT
    depth_percent: Decimal
    asks_min_price: Decimal
    bids_max_price: Decimal
    bids: list[Level] = Field(description="[price, cumulative quantity], best first")
    asks: list[Level] = Field(description="[price, cumulative quantity], best first")


class Candle(BaseModel):
    model_config = STRICT
    range: str = Field(examples=["1m"])
    range_ms: int
    open_ts: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


class Trade(BaseModel):
    model_config = STRICT
    price: Decimal
    quantity: Decimal
    side: Literal["buy", "sell"]
    ts: int


class Balance(BaseModel):
    model_config = STRICT
    total: Decimal
    available: Decimal
    updated_ts: int


class Assets(BaseModel):
    model_config = STRICT
    user_no: str | None
    balances: dict[str, Balance]


class Order(BaseModel):
    model_config = STRICT
    order_no: str
    symbol: str
    side: Literal["buy", "sell"]
    price: Decimal
    quantity: Decimal
    remaining_quantity: Decimal
    average_price: Decimal
    amount: Decimal
    remaining_amount: Decimal
    fee: Decimal
    state: str = Field(examples=["new", "cancel"])
    created_ts: int
    updated_ts: int


class Fill(BaseModel):
    model_config = STRICT
    deal_no: str
    order_no: str
    symbol: str
    side: Literal["buy", "sell"]
    price: Decimal
    quantity: Decimal
    liquidity: Literal["maker", "taker"]
    order_type: Literal["market", "limit"]
    ts: int


class ChannelInfo(BaseModel):
    channel: str
    symbol: str | None
    status: Literal["connecting", "live", "stale", "failed"]
    reason: str | None
    seq: int
    last_update_ts: int | None
    exchange_ts: int | None
    messages: int
    rejected: int
    superseded: int
    gaps: int = Field(
        description="trade pushes that shared nothing with a full previous window "
        "(trades may be missing; streams got a status event with reason gap)"
    )
    last_rejection: str | None
    subscribers: int
    pinned: bool
    link: str
    link_state: Literal["connecting", "up", "failed"]
    link_connects: int


class LinkInfo(BaseModel):
    name: str
    endpoint: str
    state: Literal["connecting", "up", "failed"]
    reason: str | None
    connects: int
    attempts: int
    topics: int
    last_message_ts: int | None


class ChannelReport(BaseModel):
    channels: list[ChannelInfo]
    links: list[LinkInfo]
    unknown_topic_messages: int
    open_streams: int


class ClusterNode(BaseModel):
    node: str
    role: Literal["leader", "follower", "gone"]
    last_seen_ms: int


class Cluster(BaseModel):
    """This replica and the cluster it is one of (a single process is a
    cluster of one that always leads)."""

    node: str = Field(description="this process's GATEWAY_NODE_ID")
    role: Literal["leader", "follower"]
    leader: str | None = Field(description="the node id of the leader, none while there is none")
    term: int = Field(description="the fencing term: grows whenever another process leads")
    epoch: str = Field(description="the epoch of the cluster's data: the first part of event ids")
    nodes: list[ClusterNode]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    problems: list[str]


class WsSubscribe(BaseModel):
    """Client → gateway: follow channels (resuming after ``last_event_id``)."""

    op: Literal["subscribe"]
    channels: list[str] = Field(examples=[["orderbook:BTC_USD:0.01", "trades:BTC_USD"]])
    last_event_id: str | None = None
    books: Literal["full", "diff"] = Field(
        "full", description="diff: these order book and depth channels as diffs (docs/api.md)"
    )


class WsUnsubscribe(BaseModel):
    """Client → gateway: stop following channels."""

    op: Literal["unsubscribe"]
    channels: list[str]


class WsSubscribed(BaseModel):
    """Gateway → client: a subscribe was done. ``position`` is the id to resume
    from if the connection drops before any event."""

    model_config = STRICT
    op: Literal["subscribed"]
    channels: list[str]
    reset: bool = Field(description="the given last_event_id could not be resumed")
    position: str = Field(description="EPOCH-SEQ: where this connection's events start")


class WsUnsubscribed(BaseModel):
    """Gateway → client: an unsubscribe was done."""

    model_config = STRICT
    op: Literal["unsubscribed"]
    channels: list[str]


class WsEvent(BaseModel):
    """Gateway → client: one event, exactly what the SSE stream carries."""

    id: str | None = Field(description="EPOCH-SEQ; null for reset")
    event: str = Field(examples=["orderbook", "trade", "status", "reset"])
    data: dict[str, Any]


class WsError(Problem):
    """Gateway → client: an op was refused; the connection stays open."""

    op: Literal["error"]


# --- stream events (openapi/asyncapi.yaml, app/http/asyncapi.py) ------------
# The data of each event of /v1/stream, which the WebSocket carries as the
# ``data`` of its event frames.


class SnapshotEvent(Envelope[DataT], Generic[DataT]):
    """A snapshot channel's new state: the REST snapshot's envelope."""

    model_config = STRICT


class ItemEvent(BaseModel, Generic[DataT]):
    """One new item of a log or map channel (a trade, an order's new state, a fill)."""

    model_config = STRICT
    channel: str = Field(examples=["trades:BTC_USD"])
    symbol: str | None = Field(examples=["BTC/USD"])
    seq: int = Field(description="the channel's sequence number: one per distinct item")
    exchange_ts: int = Field(description="the item's own timestamp (ms)")
    received_ts: int = Field(description="when the gateway received the push (ms)")
    data: DataT


class OrderBookDiff(BaseModel):
    """The levels that changed: each ``[price, quantity]`` sets that level's
    quantity, a quantity of ``"0"`` removes it."""

    model_config = STRICT
    bids: list[Level] = Field(description='[price, new quantity or "0"]')
    asks: list[Level] = Field(description='[price, new quantity or "0"]')


class DepthDiff(OrderBookDiff):
    """The levels that changed (cumulative quantities), and those of the
    depth chart's other fields that changed (absent: unchanged)."""

    depth_percent: Decimal | None = None
    asks_min_price: Decimal | None = None
    bids_max_price: Decimal | None = None


class DiffEvent(BaseModel, Generic[DataT]):
    """An order book's or depth chart's update as a diff (``books=diff``):
    applied to the book of ``prev_seq`` it gives exactly the book of ``seq``,
    whose CRC32 checksum is ``checksum``."""

    model_config = STRICT
    channel: str = Field(examples=["orderbook:BTC_USD:0.01"])
    symbol: str | None = Field(examples=["BTC/USD"])
    seq: int = Field(
        description="the channel's seq of the book this diff makes (as REST answers it)"
    )
    prev_seq: int = Field(description="the seq of the book this diff applies to")
    exchange_ts: int | None
    received_ts: int | None
    data: DataT
    checksum: int = Field(
        ge=0,
        le=2**32 - 1,
        description="CRC32 of the top 10 asks (lowest first) then the top 10 bids (highest "
        "first), each price then quantity with the decimal point and then the leading zeros "
        "removed, no separators (Kraken's recipe)",
    )


class StatusEvent(BaseModel):
    """A channel's status changed (or, with reason ``gap``, a trade push shared
    nothing with the previous window: trades may be missing)."""

    model_config = STRICT
    channel: str
    status: Literal["connecting", "live", "stale", "failed"]
    reason: str | None = Field(
        description="why: the link's or the broker's words, `gap`, or a Redis outage"
    )
    detail: str | None = Field(None, description="with reason `gap`: what it means")
    ts: int = Field(description="when the gateway saw the change (ms)")


class ResetEvent(BaseModel):
    """The stream could not resume from the id given: fresh snapshots follow."""

    model_config = STRICT
    reason: str
    epoch: str = Field(description="the epoch ids now start with")
    channels: list[str]


# Each event of a stream: its name and the model of its data.
STREAM_EVENTS: dict[str, Any] = {
    "orderbook": SnapshotEvent[OrderBook],
    "depth": SnapshotEvent[Depth],
    "kline": SnapshotEvent[Candle],
    "assets": SnapshotEvent[Assets],
    "trade": ItemEvent[Trade],
    "order": ItemEvent[Order],
    "fill": ItemEvent[Fill],
    "orderbook_diff": DiffEvent[OrderBookDiff],
    "depth_diff": DiffEvent[DepthDiff],
    "status": StatusEvent,
    "reset": ResetEvent,
}


WS_DESCRIPTION = """A WebSocket (text frames of JSON) with the events, ids and guarantees of
`/v1/stream`, on which the client adds and drops channels as it goes.

Client → gateway: `WsSubscribe` and `WsUnsubscribe`. Gateway → client:
`WsSubscribed` or `WsUnsubscribed` for each op, or `WsError` (the problem fields of REST; the connection stays);
then `WsEvent` frames. Subscribing sends the current snapshots of the new
channels, or with `last_event_id` every missed event once, in order (or an
event `reset` first when it cannot); with `books: "diff"` its order book and
depth channels come as `orderbook_diff` / `depth_diff` after their whole
event (to ask for a channel whole again, unsubscribe and subscribe it). Heartbeats are WebSocket pings. A client
whose buffer overflows is closed with code 1013 and resumes with its last id.
A binary frame, JSON that is not an op (or nested past Python's limit) and an
op past `GATEWAY_WS_OPS_PER_S` each get an error frame; a whole burst of ops
past the rate closes the connection with code 1008, and a message over
`GATEWAY_WS_MAX_MESSAGE_BYTES` with code 1009.
Private channels need the bearer token (header, or `access_token` in the
query); the caps of `/v1/stream` apply."""


_DESCRIPTIONS = {
    304: "Not modified (If-None-Match matched the ETag)",
    400: "A parameter outside its allowed values",
    401: "Missing or wrong bearer token",
    404: "Not found (no such path), the private feed is not configured, or the "
    "exchange sent no data for the channel when it was last subscribed (a wrong symbol?)",
    429: "A cap was reached",
    503: "No data yet; come back after Retry-After seconds",
    408: "The request head did not arrive within GATEWAY_HEADER_TIMEOUT_S (answered by the server, then closed)",
    414: "The request line is longer than GATEWAY_MAX_REQUEST_LINE (answered by the server, then closed)",
    431: "The request head is larger than GATEWAY_MAX_HEADER_BYTES (answered by the server, then closed)",
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for problem answers with these status codes."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        if code == 304:
            responses[code] = {"description": _DESCRIPTIONS[code], "content": {}}
            continue
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS[code],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if code == 503:
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[code] = response
    return responses


def connection_limits() -> dict[int | str, dict[str, Any]]:
    """What the server's connection layer may answer on any route (app/protocols/http.py)."""
    return problems(408, 414, 431)


def snapshot(model: Any, *codes: int) -> dict[int | str, dict[str, Any]]:
    """Responses of a snapshot route: the envelope, ETag, and problems."""
    return {
        200: {
            "model": Envelope[model],
            "headers": {"ETag": {"schema": {"type": "string"}}},
        },
        **problems(304, 400, 404, 429, 503, *codes),
    }
