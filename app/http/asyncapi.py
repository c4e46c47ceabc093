"""The AsyncAPI 3.0 description of the streams (openapi/asyncapi.yaml).

`/v1/stream` (Server-Sent Events) and `/v1/ws` (the WebSocket) carry the
same events; their payloads are the JSON schemas of the models in
:mod:`app.http.schemas`, the ones the OpenAPI file uses, so that the two
documents cannot disagree. ``coinsuper-gateway asyncapi`` (``make asyncapi``)
writes it; a test checks that the committed file is what this makes, `make
test` validates it with the AsyncAPI CLI, and every frame the integration
tests receive is checked against the schema of its message (tests/frames.py).

AsyncAPI has no binding for Server-Sent Events: the document represents each
SSE event as a message whose ``headers`` are the SSE fields (``event``,
``id``) and whose ``payload`` is the JSON of its ``data:`` lines, and says so
in the channel's description; the opening ``retry:``, the position block
(only an ``id:``) and the comments are messages too, with string payloads.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import __version__
from app.http import schemas
from app.http.sinks import HEARTBEAT, OVERFLOW_CODE, OVERFLOW_NOTE, SHUTDOWN_CODE, STALLED_CODE
from app.http.ws import POLICY

REF = "#/components/schemas/{model}"
ID_PATTERN = "^.+-[0-9]+$"  # EPOCH-SEQ
NO_ID = (
    "absent (null on the WebSocket) for a replica's word on its own link to the cluster's "
    "Redis (stale while it cannot be reached, then the channel's status again): that status "
    "is not in the cluster's log, so it has no place in the sequence"
)
CLOSE_CODES = {
    1007: "a text frame that is not UTF-8",
    POLICY: "refused at the upgrade (a missing or wrong token with GATEWAY_REQUIRE_TOKEN, a cap "
    "on streams, a server that is not the gateway's own: the error frame before it says which), "
    "or a whole burst of ops past GATEWAY_WS_OPS_PER_S",
    1009: "a message over GATEWAY_WS_MAX_MESSAGE_BYTES",
    STALLED_CODE: "not seen by the client: one that took nothing for GATEWAY_SEND_TIMEOUT_S has "
    "its socket dropped at once, with no close frame (the client sees 1006)",
    SHUTDOWN_CODE: "the gateway is stopping (resume with the last id, from another replica or "
    "later)",
    OVERFLOW_CODE: "the client fell more than GATEWAY_CLIENT_BUFFER trades, orders or fills "
    "behind while its connection was full: resume with last_event_id (nothing is lost)",
}
EVENT_SUMMARIES = {
    "orderbook": "An order book's new state (the REST snapshot's envelope)",
    "depth": "A depth chart's new state",
    "kline": "A candle's new state",
    "assets": "The account's balances (private)",
    "trade": "One new distinct trade",
    "order": "An order's new state (private)",
    "fill": "One new fill (private)",
    "orderbook_diff": "An order book's update as level diffs and a checksum (books=diff)",
    "depth_diff": "A depth chart's update as level diffs and a checksum (books=diff)",
    "status": "A channel's status changed, or trades may be missing (reason gap)",
    "reset": "The id given cannot be resumed: fresh snapshots follow",
}
SSE_DESCRIPTION = """Server-Sent Events (`text/event-stream`), `GET /v1/stream?channels=a,b`.

**How SSE is represented here.** AsyncAPI has no binding for Server-Sent
Events. Each SSE event is a message: its `headers` are the event's SSE fields
(`event:` the message's name, `id:` its `EPOCH-SEQ` id), its `payload` the
JSON of its `data:` line. The blocks without data are messages with string
payloads: `retry` (the first block, `retry: 2000`), `position` (a block with
only an `id:`, the newest event's, after the opening), `heartbeat` (the comment
`: heartbeat` after GATEWAY_HEARTBEAT_S with nothing sent, at most 1.2 times
that and a tick) and `closed` (the
comment that ends a stream that fell too far behind).

The stream opens with `retry`, the current snapshot of every snapshot channel
that has data (or, resuming with `Last-Event-ID` or `?last_event_id=`, every
missed event once, in order; a `reset` first when it cannot), then `position`.
Then events as they come. Ids: one sequence for the whole gateway, so one id
resumes a stream over any set of channels (a replica's `status` about its own
link to the cluster's Redis has none: it is not in the log). With `books=diff`
an order book or depth channel sends its whole event first (at open, after a
`reset`, when a diff cannot continue the client's copy) and then
`orderbook_diff` / `depth_diff`: level pairs that set a price's quantity (`"0"`
removes it), `prev_seq` the book it applies to, `checksum` the CRC32 of the
result's top 10 asks and bids; resuming replays every missed diff, a slow
client's collapse into one. A refused stream is a 4xx problem
(`application/problem+json`, in openapi/openapi.json), never a stream."""
WS_DESCRIPTION = (
    """A WebSocket, `GET /v1/ws`: text frames of JSON, the same events, ids and
guarantees as `/v1/stream`, on which the client adds and drops channels as it
goes. Each op is answered (`subscribed`, `unsubscribed`, or `error`: the
problem fields of REST; an error never closes the connection), then the new
channels' snapshots (ids: the current position) or, with `last_event_id`,
every missed event once, in order (`reset` first when it cannot). Heartbeats
are WebSocket pings. Private channels need the bearer token: an
`Authorization` header on the upgrade, or `access_token` in the query.
Close codes: """
    + "; ".join(f"`{code}` {why}" for code, why in CLOSE_CODES.items())
    + "."
)


# The WebSocket's ops and their answers: message, title, summary, model.
WS_OPS: dict[str, tuple[str, str, type[BaseModel]]] = {
    "ws_subscribe": (
        "subscribe",
        "Follow channels (resuming after last_event_id)",
        schemas.WsSubscribe,
    ),
    "ws_unsubscribe": ("unsubscribe", "Stop following channels", schemas.WsUnsubscribe),
    "ws_subscribed": ("subscribed", "A subscribe was done", schemas.WsSubscribed),
    "ws_unsubscribed": ("unsubscribed", "An unsubscribe was done", schemas.WsUnsubscribed),
    "ws_error": ("error", "An op was refused (the connection stays open)", schemas.WsError),
}


def _schemas() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The components' schemas, and each model's reference: by event name, and
    by the WebSocket op's message."""
    models: dict[str, type[BaseModel]] = {
        **schemas.STREAM_EVENTS,
        **{key: model for key, (_, _, model) in WS_OPS.items()},
    }
    keyed, top = models_json_schema(
        [(model, "serialization") for model in models.values()], ref_template=REF
    )
    refs = {name: keyed[(model, "serialization")] for name, model in models.items()}
    return dict(sorted(top["$defs"].items())), refs


def _sse_message(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "type": "object",
        "properties": {"event": {"const": name}},
        "required": ["event"],
    }
    if name != "reset":  # a reset has no id: the stream's position is unchanged
        headers["properties"]["id"] = {"type": "string", "pattern": ID_PATTERN}
        if name != "status":
            headers["required"].append("id")
        else:
            headers["properties"]["id"]["description"] = NO_ID
    return {
        "name": name,
        "title": name,
        "summary": EVENT_SUMMARIES[name],
        "contentType": "application/json",
        "headers": headers,
        "payload": payload,
    }


def _ws_id(name: str) -> dict[str, Any]:
    if name == "reset":
        return {"type": "null"}
    if name == "status":
        return {
            "anyOf": [{"type": "string", "pattern": ID_PATTERN}, {"type": "null"}],
            "description": NO_ID,
        }
    return {"type": "string", "pattern": ID_PATTERN}


def _ws_event(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "title": f"{name} (WebSocket)",
        "summary": EVENT_SUMMARIES[name] + ": the SSE event's id, name and data in one frame",
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "id": _ws_id(name),
                "event": {"const": name},
                "data": payload,
            },
            "required": ["id", "event", "data"],
        },
    }


def _client_op(title: str, message: str, ack: str) -> dict[str, Any]:
    """A client's op on the WebSocket, answered by an acknowledgement or an error."""
    ws = {"$ref": "#/channels/ws"}
    return {
        "action": "receive",
        "title": title,
        "channel": ws,
        "messages": [{"$ref": f"#/channels/ws/messages/{message}"}],
        "reply": {
            "channel": ws,
            "messages": [
                {"$ref": f"#/channels/ws/messages/{ack}"},
                {"$ref": "#/channels/ws/messages/ws_error"},
            ],
        },
    }


def _text(summary: str, example: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "contentType": "text/event-stream",
        "payload": {"type": "string", "examples": [example]},
    }


def document() -> dict[str, Any]:
    """The whole AsyncAPI document, as a mapping (written as YAML)."""
    components, refs = _schemas()
    events = {name: refs[name] for name in schemas.STREAM_EVENTS}
    sse = {f"sse_{name}": _sse_message(name, ref) for name, ref in events.items()}
    sse |= {
        "sse_retry": _text("The first block: the reconnection delay (ms)", "retry: 2000"),
        "sse_position": _text(
            "A block with only an id (the newest event's), after the opening: a client "
            "dropped before any live event resumes from it",
            "id: a1b2c3d4-57",
        ),
        "sse_heartbeat": _text("A comment when nothing else was sent", HEARTBEAT.decode().strip()),
        "sse_closed": _text(
            "The comment that ends a stream that fell too far behind: resume with Last-Event-ID",
            OVERFLOW_NOTE.decode().strip(),
        ),
    }
    ws_events = {f"ws_{name}": _ws_event(name, ref) for name, ref in events.items()}
    ws_ops = {
        key: {
            "name": key.removeprefix("ws_"),
            "title": title,
            "summary": summary,
            "contentType": "application/json",
            "payload": refs[key],
        }
        for key, (title, summary, _) in WS_OPS.items()
    }
    messages = sse | ws_ops | ws_events

    def refs_to(names: list[str]) -> dict[str, Any]:
        return {name: {"$ref": f"#/components/messages/{name}"} for name in names}

    stream_query = {
        "type": "object",
        "properties": {
            "channels": {
                "type": "string",
                "description": "comma-separated channel names",
                "examples": ["orderbook:BTC_USD:0.01,trades:BTC_USD"],
            },
            "last_event_id": {"type": "string", "description": "as the Last-Event-ID header"},
            "books": {
                "type": "string",
                "enum": ["full", "diff"],
                "description": "diff: order books and depth charts as their whole event, then "
                "orderbook_diff / depth_diff events",
            },
            "resync": {
                "type": "string",
                "description": "with books=diff: channels whose whole event comes first, "
                "even resuming (the client could not prove its copy)",
            },
        },
        "required": ["channels"],
    }
    auth_headers = {
        "type": "object",
        "properties": {
            "Authorization": {
                "type": "string",
                "description": "Bearer <token>, for private channels",
            }
        },
    }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:coinsuper-gateway:streams",
        "info": {
            "title": "coinsuper-gateway streams",
            "version": __version__,
            "description": "The live side of coinsuper-gateway: Server-Sent Events and a "
            "WebSocket carrying the same events, ids and guarantees. Every distinct trade and "
            "fill reaches a resuming client once, in order; where that is impossible the client "
            "gets `reset` (and fresh snapshots) or a `status` with reason `gap`. Prices, "
            "quantities and balances are strings equal to what the exchange sent. The REST "
            "routes are in openapi.json. Generated by `make asyncapi` from app/http/schemas.py.",
            "license": {"name": "Proprietary"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "http": {
                "host": "127.0.0.1:8000",
                "protocol": "http",
                "description": "the gateway (make demo); SSE",
            },
            "ws": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "the gateway (make demo); the WebSocket",
            },
        },
        "channels": {
            "stream": {
                "address": "/v1/stream",
                "title": "Server-Sent Events",
                "description": SSE_DESCRIPTION,
                "servers": [{"$ref": "#/servers/http"}],
                "messages": refs_to(list(sse)),
                "bindings": {
                    "http": {"bindingVersion": "0.3.0"},
                },
            },
            "ws": {
                "address": "/v1/ws",
                "title": "WebSocket",
                "description": WS_DESCRIPTION,
                "servers": [{"$ref": "#/servers/ws"}],
                "messages": refs_to(list(ws_ops) + list(ws_events)),
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "access_token": {
                                    "type": "string",
                                    "description": "bearer token, for private channels",
                                }
                            },
                        },
                        "headers": auth_headers,
                        "bindingVersion": "0.1.0",
                    }
                },
                "x-close-codes": {str(code): why for code, why in CLOSE_CODES.items()},
            },
        },
        "operations": {
            "streamEvents": {
                "action": "send",
                "title": "The gateway sends a stream's events",
                "channel": {"$ref": "#/channels/stream"},
                "messages": [{"$ref": f"#/channels/stream/messages/{name}"} for name in sse],
                "bindings": {
                    "http": {"method": "GET", "query": stream_query, "bindingVersion": "0.3.0"}
                },
            },
            "wsSubscribe": _client_op("A client subscribes", "ws_subscribe", "ws_subscribed"),
            "wsUnsubscribe": _client_op(
                "A client unsubscribes", "ws_unsubscribe", "ws_unsubscribed"
            ),
            "wsEvents": {
                "action": "send",
                "title": "The gateway sends the events of the channels subscribed",
                "channel": {"$ref": "#/channels/ws"},
                "messages": [{"$ref": f"#/channels/ws/messages/{name}"} for name in ws_events]
                + [{"$ref": "#/channels/ws/messages/ws_error"}],
            },
        },
        "components": {"schemas": components, "messages": messages},
    }


def text() -> str:
    """The document as committed (YAML, keys in the order written, every
    shared part written out where it is used: no anchors)."""
    return yaml.dump(document(), Dumper=_Plain, sort_keys=False, allow_unicode=True, width=100)


class _Plain(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True
