"""One-way ingest: every upstream message, from any source, down one path.

Theory of operation: a source (an MQTT link, a recording being replayed, the
simulator through a link) hands ``(topic, payload, received_ts)`` to
:meth:`Pipeline.feed`, and nothing downstream calls back up. The pipeline

1. records the message as received (when recording),
2. routes the topic to its channel (a topic no channel follows is counted and
   its first sighting logged),
3. skips a trade push that is the same bytes as the last accepted one (the
   exchange repeats its window every push: nothing new, still fresh),
4. decodes it (:func:`app.domain.decode.decode`, pure), and
5. applies the update to the state (:class:`app.streams.hub.Hub`), which numbers
   the events and records the change in the event log; the fan-out gets the
   events once the log holds them (at once in one process, after the write to
   Redis on a cluster's leader);
   a rejection is counted on the channel and logged once per reason.

A fault of the gateway's own while applying one message is logged once per
channel and the message dropped: one bad message must never take a link down.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from app.domain.channels import Channel, Kind
from app.domain.decode import Rejection, Update, decode
from app.ingest.recording import Recorder

log = logging.getLogger("coinsuper_gateway.pipeline")

_LOGGED_TOPICS_CAP = 1000
Route = Callable[[str], Channel | None]


class StateSink(Protocol):
    """What the pipeline writes to: the state, the event log and the fan-out behind it."""

    def repeated(self, channel: Channel, payload: bytes, received_ts: int) -> bool: ...
    def reject(self, channel: Channel, reason: str) -> bool: ...
    def apply(self, channel: Channel, update: Update, received_ts: int) -> None: ...


class Pipeline:
    """Routes, records, decodes and applies upstream messages."""

    def __init__(
        self,
        route: Route,
        sink: StateSink,
        *,
        max_skew_ms: int = 300_000,
        recorder: Recorder | None = None,
    ) -> None:
        self.route = route
        self.sink = sink
        self.max_skew_ms = max_skew_ms
        self.recorder = recorder
        self.unknown_topics: Counter[str] = Counter()
        self.unknown_messages = 0
        self._faulted: set[str] = set()

    def feed(self, topic: str, payload: bytes, received_ts: int) -> None:
        """Take one upstream message (a :data:`app.ingest.links.MessageSink`)."""
        if self.recorder is not None:
            self.recorder.write(topic, payload, received_ts)
        channel = self.route(topic)
        if channel is None:
            self._unknown(topic)
            return
        try:
            self._ingest(channel, topic, payload, received_ts)
        except Exception:  # one bad message must never take a link down
            if channel.name not in self._faulted:
                self._faulted.add(channel.name)
                log.exception("failed to apply a message on %s", channel.name)

    def _ingest(self, channel: Channel, topic: str, payload: bytes, received_ts: int) -> None:
        sink = self.sink
        if channel.kind is Kind.TRADES and sink.repeated(channel, payload, received_ts):
            return
        update = decode(channel, payload, received_ts, self.max_skew_ms)
        if isinstance(update, Rejection):
            if sink.reject(channel, update.reason):
                log.warning(
                    "rejected a payload on %s (channel %s): %s",
                    topic[:200],
                    channel.name,
                    update.reason,
                )
            return
        sink.apply(channel, update, received_ts)

    def _unknown(self, topic: str) -> None:
        self.unknown_messages += 1
        key = topic[:200]
        if key in self.unknown_topics:
            self.unknown_topics[key] += 1
        elif len(self.unknown_topics) < _LOGGED_TOPICS_CAP:  # bounded: topics are the broker's
            self.unknown_topics[key] = 1
            log.warning("message on a topic no channel follows: %s", key)
