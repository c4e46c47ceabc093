"""openapi/asyncapi.yaml: the committed file is what the app makes, it names
every event, op and close code, and a gateway's frames on both transports are
what it says (tests/frames.py checks every frame the other tests receive; here
one run drives every message the document names)."""

from __future__ import annotations

import json
import os
import queue
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import connect_ws

from app.http import asyncapi, schemas
from app.http.sinks import OVERFLOW_NOTE
from tests import frames
from tests.support import EventStream, gateway, wait_for

TOKEN = "asyncapi-token"
EVERY_CHANNEL = ["orderbook:BTC_USD:0.01", "depth:BTC_USD", "kline:BTC_USD:1m", "trades:BTC_USD",
                 "assets", "orders", "fills"]
# Messages this run does not drive: the comment that ends a stream that fell
# too far behind (tests/test_streams.py's slow readers read it from a raw
# socket; its text is checked below, against the bytes the sink writes).
NOT_DRIVEN_HERE = {"sse_closed"}


def test_the_committed_document_is_what_the_app_makes() -> None:
    assert frames.DOCUMENT.read_text() == asyncapi.text(), "make asyncapi"


def test_it_names_every_event_op_and_close_code() -> None:
    document = frames.document()
    assert document["asyncapi"].startswith("3.0")
    messages = set(document["components"]["messages"])
    for name in schemas.STREAM_EVENTS:
        assert {f"sse_{name}", f"ws_{name}"} <= messages
    assert {"sse_retry", "sse_position", "sse_heartbeat", "sse_closed",
            "ws_subscribe", "ws_unsubscribe", "ws_subscribed", "ws_unsubscribed", "ws_error"} <= messages
    ws = document["channels"]["ws"]
    assert set(ws["x-close-codes"]) == {"1007", "1008", "1009", "1011", "1012", "1013"}
    assert all(f"`{code}`" in ws["description"] for code in ws["x-close-codes"])
    assert "AsyncAPI has no binding for Server-Sent Events" in " ".join(
        document["channels"]["stream"]["description"].split())


def test_the_closing_comment_is_the_documents() -> None:
    frames.take_failures()
    frames.check_sse({":": OVERFLOW_NOTE.decode().strip()})
    assert frames.take_failures() == []
    assert OVERFLOW_NOTE.decode().strip() in frames.document()["components"]["messages"]["sse_closed"][
        "payload"]["examples"]


def test_a_frame_unlike_the_document_is_caught() -> None:
    frames.take_failures()
    good = {"channel": "trades:BTC_USD", "symbol": "BTC/USD", "seq": 3, "exchange_ts": 1, "received_ts": 2,
            "data": {"price": "6674.56", "quantity": "0.1", "side": "buy", "ts": 1}}
    frames.check_sse({"id": "a1b2c3d4-7", "event": "trade", "data": json.dumps(good)})
    frames.check_ws({"id": "a1b2c3d4-7", "event": "trade", "data": good})
    assert frames.take_failures() == []
    as_float = {**good, "data": {**good["data"], "price": 6674.56}}  # a decimal through float
    bad = [
        lambda: frames.check_sse({"id": "a1b2c3d4-8", "event": "trade", "data": json.dumps(as_float)}),
        lambda: frames.check_ws({"id": "a1b2c3d4-8", "event": "trade", "data": {**good, "extra": 1}}),
        lambda: frames.check_sse({"id": "x", "event": "trade", "data": json.dumps(good)}),  # no sequence
        lambda: frames.check_sse({"event": "surprise", "data": "{}", "id": "a-1"}),
        lambda: frames.check_ws({"op": "error", "status": 400}),  # a problem without its fields
        lambda: frames.check_sse({":": ": something else"}),
    ]
    for check in bad:
        check()
        assert frames.take_failures() != []


@pytest.mark.processes
def test_one_gateway_run_gives_every_message_of_the_document_valid(tmp_path: Path) -> None:
    frames.SEEN.clear()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    env = {"GATEWAY_TOKENS": TOKEN, "GATEWAY_HEARTBEAT_S": "1", "GATEWAY_STALE_FACTOR": "1"}
    with gateway(tmp_path, env, command="demo") as gw:
        wait_for(lambda: gw.http.get("/v1/orderbook/BTC_USD?step=0.01").status_code == 200, 15, "a book")
        sse = EventStream(f"{gw.base}/v1/stream?channels={','.join(EVERY_CHANNEL)}", auth)
        resumed = EventStream(f"{gw.base}/v1/stream?channels=trades:BTC_USD&last_event_id=0000-1")
        diffs = EventStream(f"{gw.base}/v1/stream?channels=orderbook:BTC_USD:0.01,depth:BTC_USD&books=diff")
        with httpx.Client(headers=auth) as http, connect_ws(gw.base + "/v1/ws", http) as ws:
            ws.send_text(json.dumps({"op": "subscribe", "channels": EVERY_CHANNEL}))
            received: list[Any] = [ws.receive_json()]
            ws.send_text(json.dumps({"op": "dance"}))
            ws.send_text(json.dumps({"op": "unsubscribe", "channels": ["depth:BTC_USD"]}))
            ws.send_text(json.dumps({"op": "subscribe", "channels": ["trades:ETH_USD"], "last_event_id": "0000-1"}))
            ws.send_text(json.dumps({"op": "subscribe", "channels": ["orderbook:ETH_USD:0.01", "depth:ETH_USD"],
                                     "books": "diff"}))

            def every_event_came() -> bool:
                for _ in range(100):  # what has come, not all that will: events never stop
                    try:
                        received.append(ws.receive_json(timeout=0.05))
                    except queue.Empty:
                        break
                names = {f.get("event") or f.get("op") for f in received}
                missing = {"orderbook", "depth", "kline", "trade", "assets", "order", "fill", "reset",
                           "subscribed", "unsubscribed", "error", "orderbook_diff", "depth_diff"} - names
                missing_sse = {"order", "fill", "trade", "kline"} - {e.get("event") for e in sse.events}
                missing_sse |= {"orderbook_diff", "depth_diff"} - {e.get("event") for e in diffs.events}
                if missing or missing_sse:  # wait_for's message names the last one
                    raise AssertionError(f"not yet: {sorted(missing)} on the WebSocket, "
                                         f"{sorted(missing_sse)} on SSE")
                return True

            wait_for(every_event_came, 60, "every event on both transports")
            os.kill(gw.process.pid, signal.SIGUSR1)  # the demo stops its exchange: channels go stale
            wait_for(lambda: every_event_came() and any(f.get("event") == "status" for f in received)
                     and sse.named("status"), 30, "status events")
            os.kill(gw.process.pid, signal.SIGUSR1)
        wait_for(lambda: any(c == ": heartbeat" for c in resumed.comments), 10, "a heartbeat")
        sse.close()
        resumed.close()
        diffs.close()
    missing = set(frames.document()["components"]["messages"]) - set(frames.SEEN) - NOT_DRIVEN_HERE
    missing -= {"ws_subscribe", "ws_unsubscribe"}  # what clients send: the gateway parses those
    assert missing == set(), f"not received in this run: {sorted(missing)}"
    assert frames.take_failures() == []
