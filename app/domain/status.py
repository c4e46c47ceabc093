"""Channel status and readiness, as pure functions of what is known. No I/O.

Theory of operation: a channel's status (docs/api.md: ``connecting``, ``live``,
``stale``, ``failed``) follows from its link and its data. A refused link is
``failed`` whatever the data. Public channels are fresh while pushes keep
coming: no data yet is ``connecting``, data older than the stale threshold is
``stale``. Private topics push only on change, so their freshness is their
link's: ``live`` while it is up, ``stale`` once it has been up and dropped,
``connecting`` before it ever came up. Readiness asks every channel to be
neither stale nor failed, and every configured (pinned) one to be live.

The monitor (:mod:`app.gateway`) evaluates these once a pass and emits a
``status`` event when a channel's status changes; the HTTP side reads the same
function, so an answer and a stream never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALE = "stale"
    FAILED = "failed"


class LinkView(StrEnum):
    """A link's state as the status rules need it (mirrors ``LinkState``)."""

    CONNECTING = "connecting"
    UP = "up"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known of one channel at one moment."""

    private: bool
    link: LinkView | None  # None: no link carries the channel (not subscribed)
    link_reason: str | None = None
    link_connects: int = 0  # how many times the link has come up
    has_data: bool = False
    stale: bool = False  # data older than the threshold (public channels)


NO_UPDATE = "no update within the expected interval"


def channel_status(facts: Facts) -> tuple[Status, str | None]:
    """A channel's status and why (the reason is None when there is nothing to say)."""
    if facts.link is LinkView.FAILED:
        return Status.FAILED, facts.link_reason
    if facts.private:
        if facts.link is LinkView.UP:
            return Status.LIVE, None
        if facts.link is not None and facts.link_connects:
            return Status.STALE, facts.link_reason
        return Status.CONNECTING, facts.link_reason
    if not facts.has_data:
        return Status.CONNECTING, facts.link_reason
    if facts.stale:
        reason = facts.link_reason if facts.link is not LinkView.UP else None
        return Status.STALE, reason or NO_UPDATE
    return Status.LIVE, None


@dataclass(frozen=True, slots=True)
class Judged:
    """One channel as readiness sees it."""

    name: str
    pinned: bool
    status: Status
    reason: str | None


def readiness(channels: Iterable[Judged]) -> tuple[bool, list[str]]:
    """Ready when no channel is stale or failed and every pinned one is live;
    otherwise the problems, one line each. A channel asked for a moment ago
    may still be connecting."""
    problems = [
        f"{judged.name} is {judged.status.value}" + (f": {judged.reason}" if judged.reason else "")
        for judged in channels
        if judged.status in (Status.STALE, Status.FAILED)
        or (judged.pinned and judged.status is not Status.LIVE)
    ]
    return not problems, problems


def changed(previous: Status | None, current: Status) -> bool:
    """Whether a status change is news for streams: any change, except the
    first sighting of a channel that is still connecting."""
    if current == previous:
        return False
    return previous is not None or current is not Status.CONNECTING
