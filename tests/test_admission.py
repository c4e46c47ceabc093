"""Stream admission and counters, shared by SSE and the WebSocket."""

from __future__ import annotations

import json

import pytest

from app.domain.errors import TooMany
from app.streams.admission import LAG_BOUNDS, Lag, Streams, reset_payload


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


def test_the_fanout_lag_is_a_cumulative_histogram() -> None:
    lag = Lag()
    for seconds in (0.0004, 0.001, 0.003, 0.003, 7.0):
        lag.observe(seconds)
    buckets = dict(lag.buckets())
    assert list(buckets) == [*map(str, LAG_BOUNDS), "+Inf"]
    assert buckets["0.001"] == 2  # `le`: a bound holds what equals it
    assert buckets["0.0025"] == 2 and buckets["0.005"] == 4 and buckets["5.0"] == 4
    assert buckets["+Inf"] == 5 and lag.total_s == pytest.approx(7.0074)
