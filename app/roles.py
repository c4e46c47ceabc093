"""What a process answers about its channels, by its role: :class:`Leading`
(it holds the upstream links: the single process, and a cluster's leader) or
:class:`Following` (a replica of a cluster that answers from the leader's log).

A role says a channel's status and why, which channels it reports on and
through which link, whether it is ready, and what an orders or fills channel
with no data answers. A change of role swaps the object (app/gateway.py);
nothing else asks which role it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from app.domain.channels import Channel, parse_channel
from app.domain.status import NO_UPDATE, Facts, Judged, LinkView, Status, channel_status, readiness
from app.ingest.links import LinkState
from app.ingest.upstream import Upstream
from app.state.store import ChannelState
from app.streams.hub import Hub

UNREACHABLE = "the cluster's Redis cannot be reached"


@dataclass(frozen=True, slots=True)
class Listed:
    """A channel a role reports on: its status as the role judges it, and the
    link that carries it."""

    channel: Channel
    status: Status
    reason: str | None
    pinned: bool
    link: str  # "public", "private", a link of its own, or "leader" on a follower
    link_state: str
    link_connects: int


def _judged(listed: Iterable[Listed]) -> list[Judged]:
    return [Judged(item.channel.name, item.pinned, item.status, item.reason) for item in listed]


class Role(Protocol):
    def status(self, channel: Channel, now: int) -> tuple[Status, str | None]: ...
    def private_live(self, channel: Channel, now: int) -> bool:
        """Whether a private channel's status is live: what every read of it
        asks (``status`` says why not, at the cost of a Facts)."""
        ...

    def listed(self, now: int) -> list[Listed]:
        """The channels reported on (/v1/channels, /metrics), in order."""
        ...

    def holds_links(self) -> bool:
        """Whether the links it lists are this process's own (metrics count them)."""
        ...

    def readiness(self, now: int) -> tuple[bool, list[str]]: ...
    def known_empty(self, channel: Channel, now: int) -> ChannelState | None:
        """What an orders or fills channel with no data answers (known empty),
        or None while nothing can be said."""
        ...


class Leading:
    """The role of a process that holds the upstream links: statuses come from
    the links and the data's age (:func:`app.domain.status.channel_status`)."""

    def __init__(self, upstream: Upstream, hub: Hub) -> None:
        self.upstream = upstream
        self.hub = hub

    def status(self, channel: Channel, now: int) -> tuple[Status, str | None]:
        return channel_status(self.facts(channel, now))

    def private_live(self, channel: Channel, now: int) -> bool:
        # channel_status for a private channel: live exactly when its link is up.
        link = self.upstream.link_of(channel)
        return link is not None and link.state is LinkState.UP

    def facts(self, channel: Channel, now: int) -> Facts:
        link = self.upstream.link_of(channel)
        state = self.hub.state(channel)
        has_data = state is not None and state.has_data
        return Facts(
            private=channel.is_private,
            link=LinkView(link.state.value) if link is not None else None,
            link_reason=link.reason if link is not None else None,
            link_connects=link.connects if link is not None else 0,
            has_data=has_data,
            stale=has_data and state is not None and self.hub.stale(state, now),
        )

    def listed(self, now: int) -> list[Listed]:
        return [
            Listed(
                tracked.channel,
                *self.status(tracked.channel, now),
                tracked.pinned,
                tracked.link.name,
                tracked.link.state.value,
                tracked.link.connects,
            )
            for tracked in list(self.upstream.tracked.values())
        ]

    def holds_links(self) -> bool:
        return True

    def readiness(self, now: int) -> tuple[bool, list[str]]:
        return readiness(_judged(self.listed(now)))

    def known_empty(self, channel: Channel, now: int) -> ChannelState | None:
        link = self.upstream.link_of(channel)
        if link is not None and link.state is LinkState.UP:
            return self.hub.open_channel(channel)
        return None


class Following:
    """The role of a replica that does not lead: a channel's status is the
    leader's last word on it in the log and the data's age, stale while the
    log cannot be read (``connected`` is False)."""

    def __init__(self, hub: Hub, pinned: frozenset[str], connected: Callable[[], bool]) -> None:
        self.hub = hub
        self.pinned = pinned
        self.connected = connected

    def status(self, channel: Channel, now: int) -> tuple[Status, str | None]:
        store = self.hub.store
        state = store.get(channel)
        has_data = state is not None and state.has_data
        if not self.connected():
            return (Status.STALE if has_data else Status.CONNECTING), UNREACHABLE
        logged = store.statuses.get(channel.name)
        if logged is not None and logged.get("status") != Status.LIVE.value:
            reason = logged.get("reason")
            return Status(str(logged.get("status"))), str(reason) if reason else None
        if channel.is_private:
            return (Status.LIVE, None) if logged is not None else (Status.CONNECTING, None)
        if state is None or not has_data:
            return Status.CONNECTING, None
        if store.stale(state, now):
            return Status.STALE, NO_UPDATE
        return Status.LIVE, None

    def private_live(self, channel: Channel, now: int) -> bool:
        return self.status(channel, now)[0] is Status.LIVE

    def channels(self) -> list[Channel]:
        """The channels the cluster's log holds state or a status of."""
        store = self.hub.store
        channels = []
        for name in dict.fromkeys([*store.channels, *store.statuses]):
            state = store.channels.get(name)
            channels.append(state.channel if state is not None else parse_channel(name))
        return channels

    def listed(self, now: int) -> list[Listed]:
        listed = []
        for channel in self.channels():
            status, reason = self.status(channel, now)
            link_state = {"live": "up", "failed": "failed"}.get(status.value, "connecting")
            pinned = channel.name in self.pinned
            listed.append(Listed(channel, status, reason, pinned, "leader", link_state, 0))
        return listed

    def holds_links(self) -> bool:
        return False

    def readiness(self, now: int) -> tuple[bool, list[str]]:
        judged = _judged(self.listed(now))
        missing = self.pinned - {j.name for j in judged}
        judged.extend(Judged(n, True, Status.CONNECTING, None) for n in sorted(missing))
        return readiness(judged)

    def known_empty(self, channel: Channel, now: int) -> ChannelState | None:
        # Nothing is kept for a channel known empty: the leader's word that it is live.
        if self.status(channel, now)[0] is Status.LIVE:
            return ChannelState(channel)
        return None
