"""What the HTTP side sees of the gateway: small ports, each implemented in
the single process (app/streams/hub.py, app/ingest/upstream.py) and by a replica of a
cluster on Redis (app/cluster/replica.py).

- :class:`Feed`: the event log and the fan-out, as a stream sees them: open a
  stream at a position (or resume one from an id), change its channels, end
  it. Positions are opaque strings to the HTTP side.
- :class:`Sink`: where the fan-out writes a stream's bytes, implemented by
  each transport (app/http/sinks.py); :class:`Stream` is what a sink tells
  the fan-out (its connection is full, has drained, is gone, may take no
  more data).
- :class:`StateView`: the latest answer of each channel, and its status.
- :class:`Demand`: who wants which channel (the upstream subscribes on the
  first demand and releases idle channels).
- :class:`Membership`: whether this process holds the upstream links (the
  one meaning of leading), why it is not ready, what /v1/cluster answers.
- :class:`Report`: what operators read (/v1/channels, /readyz, /metrics).
- :class:`Ports`: all of these, as the HTTP side and the metrics get them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Protocol

from app.config import Settings
from app.domain.channels import Channel
from app.state.events import Event as Event  # the type of what a Form encodes

# A transport's wire form of an event (an HTTP chunk of the SSE frame, a
# WebSocket frame), made once per event and form: see Event.wire.
Form = Callable[[Event], bytes]


class Ending(Enum):
    """Why a stream ended."""

    GONE = "gone"  # the client went away, or its stream finished
    OVERFLOW = "overflow"  # fell too far behind: told to resume with its last id
    STALLED = "stalled"  # took nothing for the send timeout: dropped at once
    SHUTDOWN = "shutdown"  # the gateway is stopping


class Transport(Protocol):
    """A connection's transport, as the fan-out writes to it."""

    def is_closing(self) -> bool: ...
    def write(self, data: bytes) -> None: ...


class Sink(Protocol):
    """One client's connection, as the fan-out writes to it. ``write`` never
    blocks: the bytes go to the connection's buffer; the sink tells its
    :class:`Stream` when that buffer is full, drained, or gone.

    ``direct``: a transport the fan-out writes an event's bytes to itself
    while the transport is not closing, instead of calling ``write`` (None:
    ``write`` is called). A sink whose transport may take no more data before
    it is closing (a WebSocket after its close frame) says so at once
    (:meth:`Stream.closed_for_data`), and the fan-out calls ``write`` from
    then on. A delivery then reads the subscription and the transport, not
    the sink: at 10,000 clients every object a delivery reads is out of cache.
    """

    form: Form
    label: str  # what the log calls it: "stream", "WebSocket"
    direct: Transport | None

    def write(self, data: bytes) -> None: ...
    def heartbeat(self) -> None: ...
    def end(self, ending: Ending) -> None:
        """Say why, where the transport can, and close the connection."""
        ...


class Stream(Protocol):
    """A stream's handle, as its sink sees it."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def lost(self) -> None: ...
    def closed_for_data(self) -> None:
        """The sink's transport may take no more data (a close frame went
        out): what goes to the client goes through the sink's ``write`` from
        now on, and the stream counts as paused, so that it is dropped at the
        send timeout unless its connection ends first."""
        ...


@dataclass(frozen=True, slots=True)
class Opening:
    """What a new stream starts with: the events to send first, whether the
    client must be told to reset (its id could not be resumed), and its
    position (the id of the newest event when it opened)."""

    stream: Stream
    backlog: Sequence[Event]
    reset: bool
    position: str


class Feed(Protocol):
    """The event log and the fan-out, as streams see them."""

    @property
    def epoch(self) -> str: ...
    def position(self) -> str: ...
    def open(
        self,
        client: str,
        channels: Iterable[Channel],
        last_event_id: str | None,
        capacity: int,
        *,
        diffs: bool = False,
        resync: frozenset[str] = frozenset(),
    ) -> Opening:
        """Register a stream (parked until :meth:`attach`) and say what it
        starts with, in one synchronous step: no event falls between. With
        ``diffs`` its order books and depth charts come as diffs; those of
        ``resync`` (the client could not prove its copy) whole first."""
        ...

    def attach(self, stream: Stream, sink: Sink, opening: bytes) -> None: ...
    def extend(
        self,
        stream: Stream,
        channels: Iterable[Channel],
        last_event_id: str | None,
        *,
        diffs: bool = False,
    ) -> tuple[list[Event], bool]:
        """Add channels to a running stream: what to send for them first
        (missed events, else snapshots whose ids are the current position, so
        that ids never go back), and whether the id could not be resumed."""
        ...

    def shrink(self, stream: Stream, channels: Iterable[Channel]) -> None: ...
    def channels(self, stream: Stream) -> frozenset[str]: ...
    def write(self, stream: Stream, data: bytes) -> None:
        """Bytes that are not events (an op's reply), in order with them."""
        ...

    def end(self, stream: Stream, ending: Ending) -> None: ...
    def reset_event(self, channels: Iterable[str]) -> Event: ...
    def behind(self, last_event_id: str | None) -> bool:
        """Whether ``last_event_id`` is ahead of this process (a cursor of
        another replica that has handed out more): :meth:`reach` waits for it."""
        ...

    async def reach(self, last_event_id: str | None, timeout_s: float) -> None: ...


class Reading(Protocol):
    """One channel's latest answer as read now (stale or not), encoded."""

    @property
    def etag(self) -> str: ...
    def snapshot(self) -> bytes: ...
    def trades(self, limit: int) -> bytes: ...
    def candles(self, limit: int) -> bytes: ...
    def orders(self, state: str | None, symbol: str | None) -> bytes: ...
    def fills(self, limit: int) -> bytes: ...


class StateView(Protocol):
    """The latest state of every channel, as REST reads it."""

    def read(self, channel: Channel) -> Reading | None:
        """The channel's answer, or None while there is nothing to say."""
        ...

    async def wait_for_data(self, channel: Channel, timeout_s: float) -> bool: ...
    def status(self, channel: Channel) -> tuple[str, str | None]:
        """The channel's status (connecting, live, stale, failed) and why."""
        ...


class Demand(Protocol):
    def demand(self, channel: Channel) -> object:
        """A client wants ``channel``: subscribe it upstream if it is not."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterCounts:
    """A replica's part of /metrics."""

    redis_up: bool  # Redis answers and the log is read
    refused_writes: int
    dropped_changes: int
    term: int  # the cluster's fencing term, as last read (0 before any leader)
    unreplicated: int  # writes that fewer Redis replicas than asked confirmed in time


class Membership(Protocol):
    """This process's place: the whole gateway, or a replica of a cluster."""

    @property
    def leads(self) -> bool:
        """Whether this process holds the upstream links (and, in a cluster,
        writes the log): the one meaning of leading."""
        ...

    def problems(self) -> list[str]:
        """Why this process is not ready, whatever its channels say."""
        ...

    async def report(self) -> dict[str, object]:
        """What /v1/cluster answers."""
        ...

    def counts(self) -> ClusterCounts | None: ...


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """One channel as /v1/channels and /metrics report it."""

    channel: Channel
    status: str
    reason: str | None
    seq: int
    last_update_ts: int | None
    exchange_ts: int | None
    messages: int
    rejected: int
    superseded: int
    gaps: int
    last_rejection: str | None
    subscribers: int
    pinned: bool
    link: str
    link_state: str
    link_connects: int
    own_link: bool  # the link is this process's (not the leader's, on a follower)

    def json(self) -> dict[str, object]:
        """The row as /v1/channels answers it: the channel's name and symbol,
        then every field in order, but the metrics' own ``own_link``."""
        shown: dict[str, object] = {
            "channel": self.channel.name,
            "symbol": self.channel.display_symbol,
        }
        for field in fields(self)[1:]:
            if field.name != "own_link":
                shown[field.name] = getattr(self, field.name)
        return shown


class Report(Protocol):
    """What operators read: /v1/channels, /readyz, /v1/cluster, /metrics."""

    @property
    def node(self) -> str: ...
    def now(self) -> int:
        """The clock of staleness and answers (the wall clock, or a replay's)."""
        ...

    def rows(self, now: int) -> list[ChannelRow]: ...
    def report(self, now: int) -> dict[str, object]:
        """What /v1/channels answers: the rows, the links, counts."""
        ...

    def readiness(self, now: int) -> tuple[bool, list[str]]: ...
    async def cluster(self) -> dict[str, object]: ...
    def private_enabled(self) -> bool:
        """Whether the private routes answer."""
        ...

    @property
    def leads(self) -> bool: ...
    def cluster_counts(self) -> ClusterCounts | None: ...
    def unknown_messages(self) -> int:
        """Upstream messages on no followed topic."""
        ...

    def no_data_releases(self) -> int: ...


class LagReading(Protocol):
    """The fan-out lag's histogram (app/streams/admission.py)."""

    total_s: float

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound (seconds), ``+Inf`` last."""
        ...


class Admission(Protocol):
    """The caps on streams, and their counts (app/streams/admission.py)."""

    open: int
    events_sent: int
    overflow_closes: int
    stalled_closes: int

    @property
    def lag(self) -> LagReading: ...

    def admit(self, client: str) -> None:
        """Raise :class:`~app.domain.errors.TooMany` when a new stream of
        ``client`` would pass a cap."""
        ...


class Service(Protocol):
    """What starts and stops with the HTTP app (the gateway)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything the HTTP side and the metrics get of the gateway."""

    settings: Settings
    feed: Feed
    view: StateView
    demand: Demand
    streams: Admission
    report: Report
