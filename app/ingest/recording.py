"""Recording upstream messages, and serving a gateway fed from a recording.

A recording is gzip-compressed JSON lines, one per upstream message exactly as
received: ``{"ts": received_ms, "topic": "...", "payload": "<base64>"}``.
:class:`Recorder` appends to ``FILE`` and rotates by size: when ``FILE`` passes
``max_bytes`` (compressed) it becomes ``FILE.1`` (``FILE.1`` becomes ``FILE.2``,
and so on, ``keep`` of them). To replay a rotated recording, give the parts
oldest first: ``FILE.2 FILE.1 FILE``.

:class:`ReplaySource` reads recordings and hands each message to the same sink
an MQTT link would, at the recorded pace divided by ``speed``, with the recorded
receive times; the gateway's clock follows the recording (:meth:`now_ms`), so
answers, staleness included, are those the live gateway gave. :class:`ReplayLink`
stands in for an MQTT link in the upstream (:class:`~app.ingest.upstream.Upstream`) and reports the replay's progress.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from app.ingest.links import LinkState

log = logging.getLogger("coinsuper_gateway.recording")

Sink = Callable[[str, bytes, int], None]


@dataclass(frozen=True, slots=True)
class Record:
    ts: int
    topic: str
    payload: bytes


class Recorder:
    """Appends upstream messages to a compressed JSON-lines file, rotating by size."""

    def __init__(
        self, path: str | Path, *, max_bytes: int = 64 * 1024 * 1024, keep: int = 5
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._raw: IO[bytes] | None = None
        self._gzip: gzip.GzipFile | None = None
        self._open()

    def _open(self) -> None:
        self._raw = open(self.path, "ab")  # noqa: SIM115  (kept open while recording)
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="ab")

    def write(self, topic: str, payload: bytes, received_ts: int) -> None:
        assert self._gzip is not None and self._raw is not None
        line = {"ts": received_ts, "topic": topic, "payload": base64.b64encode(payload).decode()}
        self._gzip.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        if self._raw.tell() >= self.max_bytes:
            self._rotate()

    def flush(self) -> None:
        if self._gzip is not None:
            self._gzip.flush()

    def _rotate(self) -> None:
        self.close()
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        log.info("recording rotated: %s.1", self.path)
        self._open()

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()
            self._gzip = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def read_records(paths: Sequence[str | Path]) -> Iterator[Record]:
    """Every record of the given files, in order; a line that cannot be read is
    skipped (a recording cut short by a crash still replays)."""
    for path in paths:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                for line in handle:
                    try:
                        item = json.loads(line)
                        yield Record(
                            int(item["ts"]), str(item["topic"]), base64.b64decode(item["payload"])
                        )
                    except (ValueError, KeyError, TypeError, binascii.Error):
                        log.warning("skipped a damaged line in %s", path)
        except EOFError:
            log.warning("%s ends early (the recorder was not closed); replayed what it has", path)


class ReplaySource:
    """Feeds recorded messages to a sink at ``speed`` times the recorded pace."""

    def __init__(self, paths: Sequence[str | Path], speed: float = 1.0) -> None:
        self.paths = list(paths)
        self.speed = speed
        self.sink: Sink | None = None
        self.replayed = 0
        self.finished = False
        self._first_ts: int | None = None
        self._started: float | None = None
        self._task: asyncio.Task[None] | None = None

    def now_ms(self) -> int:
        """The gateway's clock during a replay: recorded time, advancing at ``speed``."""
        if self._first_ts is None or self._started is None:
            return time.time_ns() // 1_000_000
        return self._first_ts + int((time.monotonic() - self._started) * 1000 * self.speed)

    def start(self, sink: Sink) -> None:
        self.sink = sink
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="replay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self.sink is not None
        for record in read_records(self.paths):
            if self._first_ts is None:
                self._first_ts, self._started = record.ts, time.monotonic()
            delay = (record.ts - self.now_ms()) / 1000 / self.speed
            if delay > 0:
                await asyncio.sleep(delay)
            self.sink(record.topic, record.payload, record.ts)
            self.replayed += 1
            if self.replayed % 1000 == 0:
                await asyncio.sleep(0)  # let requests in during a fast replay
        self.finished = True
        log.info("replay finished: %d messages", self.replayed)


class ReplayLink:
    """Stands in for an MQTT link while a recording is replayed."""

    def __init__(self, name: str, topics: set[str], source: ReplaySource) -> None:
        self.name = name
        self.topics = set(topics)
        self.source = source
        self.state = LinkState.UP
        self.connects = 1
        self.up_since: float | None = time.monotonic()

    @property
    def reason(self) -> str | None:
        return "replay finished" if self.source.finished else None

    def start(self) -> None:
        pass  # the source runs on its own

    async def stop(self) -> None:
        pass

    async def add_topic(self, topic: str) -> None:
        self.topics.add(topic)

    async def remove_topic(self, topic: str) -> None:
        self.topics.discard(topic)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "endpoint": "replay:" + ",".join(str(p) for p in self.source.paths),
            "state": self.state.value,
            "reason": self.reason,
            "connects": self.connects,
            "attempts": 1,
            "topics": len(self.topics),
            "last_message_ts": None,
        }
