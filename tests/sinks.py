"""A sink for unit tests of the fan-out and the hub: it keeps what it is
written (each event as a line of JSON) and how it was ended."""

from __future__ import annotations

import json
from typing import Any

from app.domain.channels import Channel
from app.ports import Ending, Transport
from app.state.events import Event
from app.streams.hub import Hub


def line_form(e: Event) -> bytes:
    """An event as one line of JSON: what the recording sink decodes."""
    return json.dumps({"seq": e.seq, "name": e.name, "data": e.data.decode()}).encode() + b"\n"


class Recorder:
    """A sink that keeps what it is written, and how it was ended."""

    form = staticmethod(line_form)
    label = "stream"
    direct: Transport | None = None  # every write goes through write

    def __init__(self) -> None:
        self.data = b""
        self.heartbeats = 0
        self.ended: Ending | None = None

    def write(self, data: bytes) -> None:
        self.data += data

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def end(self, ending: Ending) -> None:
        self.ended = ending

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.data.splitlines() if line.startswith(b"{")]

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events()]


def follow(hub: Hub, *channels: Channel) -> Recorder:
    """A stream of ``channels`` on ``hub``, written to a recording sink."""
    opening = hub.open("address:a", channels, None, 10)
    sink = Recorder()
    hub.attach(opening.stream, sink, b"")
    return sink
