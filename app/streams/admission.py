"""Stream admission and the stream counters: one place for SSE and WebSocket.

A stream (an SSE response or a WebSocket connection) is admitted when its
client (a valid token, else its address: see :func:`app.http.stream.client_key`)
has fewer than ``GATEWAY_MAX_STREAMS_PER_CLIENT`` streams and the gateway fewer
than ``GATEWAY_MAX_STREAMS``; past either, :class:`~app.domain.errors.TooMany` names
the cap. :meth:`Streams.opened` holds the stream's place for as long as it
runs, until :meth:`Streams.closed`, and the counters here are what
``/metrics`` and ``/v1/channels`` report. The fan-out (app/streams/fanout.py) says
what happened: events sent, and how each stream ended.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable

from app.domain.errors import TooMany


class Streams:
    """The open streams, by client, and what happened to them."""

    def __init__(self, max_streams: int, max_per_client: int) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self.open = 0
        self.by_client: Counter[str] = Counter()
        self.events_sent = 0
        self.overflow_closes = 0
        self.stalled_closes = 0
        self.lag = Lag()

    def admit(self, client: str) -> None:
        """Raise :class:`TooMany` unless one more stream of ``client`` fits."""
        if self.by_client[client] >= self.max_per_client:
            raise TooMany(
                "open streams per client",
                "this client (token or address) has as many streams as it may",
                self.max_per_client,
            )
        if self.open >= self.max_streams:
            raise TooMany(
                "open streams",
                "the gateway has as many streams as it serves",
                self.max_streams,
            )

    def opened(self, client: str) -> None:
        """A stream of ``client`` takes its place (after :meth:`admit`)."""
        self.open += 1
        self.by_client[client] += 1

    def closed(self, client: str, ending: str) -> None:
        """A stream of ``client`` ended (``ending``: gone, overflow, stalled, shutdown)."""
        self.open -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
        if ending == "overflow":
            self.overflow_closes += 1
        elif ending == "stalled":
            self.stalled_closes += 1

    def sent(self, count: int) -> None:
        self.events_sent += count


# Upper bounds (seconds) of the fan-out lag's buckets, as Prometheus' `le`.
LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Lag:
    """The fan-out lag: from the upstream message's receipt (the leader's, in
    a cluster) to its event written to every ready follower's connection, one
    observation per event that had any. A bisect and two additions an event,
    read by /metrics as a histogram (app/metrics.py)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BOUNDS) + 1)  # the last: above every bound
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LAG_BOUNDS, seconds)] += 1
        self.total_s += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, ``+Inf`` last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, LAG_BOUNDS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def reset_payload(epoch: str, channels: Iterable[str]) -> bytes:
    """The data of a ``reset`` event: the given id cannot be resumed."""
    return json.dumps(
        {"reason": "cannot resume from the given id", "epoch": epoch, "channels": list(channels)}
    ).encode()
