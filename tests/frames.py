"""Every frame the tests receive from the gateway, checked against the
AsyncAPI document (openapi/asyncapi.yaml): the message its event name or op
names, and that message's schema. tests/conftest.py hooks this into the SSE
reader of tests/support.py, the client package's SSE parser and httpx-ws's
receive methods, so that every integration test checks what it reads; a frame
that is not what the document says fails the test that read it."""

from __future__ import annotations

import json
import threading
from collections import Counter
from functools import cache
from typing import Any

import jsonschema_rs
import yaml

from tests.support import REPO

DOCUMENT = REPO / "openapi/asyncapi.yaml"
SEEN: Counter[str] = Counter()  # messages checked in this process, by name
FAILURES: list[str] = []  # what did not match, for the test that read it
_lock = threading.Lock()


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


@cache
def _validator(message: str, part: str) -> Any:
    components = document()["components"]
    if message not in components["messages"]:
        return None
    schema = {"$ref": f"#/components/messages/{message}/{part}", "components": components}
    return jsonschema_rs.validator_for(schema)


def _check(message: str, part: str, value: Any, frame: str) -> None:
    validator = _validator(message, part)
    with _lock:
        SEEN[message] += 1
        if validator is None:
            FAILURES.append(f"{frame[:300]!r}: no message {message} in {DOCUMENT.name}")
            return
        errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(value)]
        if errors:
            FAILURES.append(f"{frame[:300]!r} is not a valid {message} ({part}): {errors[:3]}")


def check_sse(block: dict[str, str]) -> None:
    """One SSE block (its fields; a comment as {":": text})."""
    frame = json.dumps(block)
    if "data" in block:
        name = block.get("event", "message")
        headers = {"event": name, **({"id": block["id"]} if "id" in block else {})}
        _check(f"sse_{name}", "headers", headers, frame)
        try:
            data = json.loads(block["data"])
        except ValueError:
            with _lock:
                FAILURES.append(f"{frame[:300]!r}: data is not JSON")
            return
        _check(f"sse_{name}", "payload", data, frame)
    elif "retry" in block:
        _check("sse_retry", "payload", f"retry: {block['retry']}", frame)
        if not block["retry"].isdigit():
            with _lock:
                FAILURES.append(f"{frame!r}: retry is not a number of ms")
    elif set(block) == {"id"}:
        _check("sse_position", "payload", f"id: {block['id']}", frame)
        _check("sse_orderbook", "headers", {"event": "orderbook", "id": block["id"]}, frame)
    elif ":" in block:
        comment = block[":"]
        known = {"sse_heartbeat": ": heartbeat", "sse_closed": ": closed:"}
        for message, start in known.items():
            if comment.startswith(start):
                _check(message, "payload", comment, frame)
                return
        with _lock:
            FAILURES.append(f"{comment!r}: a comment the document does not name")
    else:
        with _lock:
            FAILURES.append(f"{frame!r}: an SSE block the document does not name")


def check_ws(frame: Any) -> None:
    """One WebSocket frame from the gateway (its text, or its parsed JSON)."""
    text = frame if isinstance(frame, str) else json.dumps(frame)
    try:
        message = json.loads(frame) if isinstance(frame, str | bytes) else frame
    except ValueError:
        with _lock:
            FAILURES.append(f"{text[:300]!r}: a frame that is not JSON")
        return
    if not isinstance(message, dict):
        with _lock:
            FAILURES.append(f"{text[:300]!r}: a frame that is not an object")
        return
    if "op" in message:
        name = {"subscribed": "ws_subscribed", "unsubscribed": "ws_unsubscribed", "error": "ws_error"}.get(
            str(message["op"]), f"ws_op_{message['op']}")
    else:
        name = f"ws_{message.get('event')}"
    _check(name, "payload", message, text)


def take_failures() -> list[str]:
    with _lock:
        found = list(FAILURES)
        FAILURES.clear()
    return found
