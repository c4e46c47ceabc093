"""Stream admission and counters, shared by SSE and the WebSocket."""

from __future__ import annotations

import json

import pytest

from app.domain.errors import TooMany
from app.streams.admission import Streams, reset_payload


def test_caps_per_client_and_overall_and_places_released_when_a_stream_ends() -> None:
    streams = Streams(max_streams=3, max_per_client=2)
    streams.opened("address:a")
    streams.opened("address:a")
    with pytest.raises(TooMany) as per_client:
        streams.admit("address:a")
    assert per_client.value.cap_name == "open streams per client" and per_client.value.cap == 2
    streams.admit("token:t")
    streams.opened("token:t")
    with pytest.raises(TooMany) as overall:
        streams.admit("token:u")
    assert overall.value.cap_name == "open streams"
    for client in ("address:a", "address:a", "token:t"):
        streams.closed(client, "gone")
    assert streams.open == 0 and not streams.by_client


def test_counters() -> None:
    streams = Streams(10, 10)
    streams.sent(3)
    streams.sent(2)
    for ending in ("overflow", "stalled", "stalled", "gone"):
        streams.opened("address:a")
        streams.closed("address:a", ending)
    assert (streams.events_sent, streams.overflow_closes, streams.stalled_closes) == (5, 1, 2)


def test_the_reset_payload() -> None:
    assert json.loads(reset_payload("e1", iter(["trades:BTC_USD"]))) == {
        "reason": "cannot resume from the given id",
        "epoch": "e1",
        "channels": ["trades:BTC_USD"],
    }
