"""Channel status and readiness: pure rules, every case."""

from __future__ import annotations

from app.config import load_settings
from app.domain.channels import parse_channel
from app.domain.status import (
    NO_UPDATE,
    Facts,
    Judged,
    LinkView,
    Status,
    changed,
    channel_status,
    readiness,
)
from app.gateway import Gateway
from app.ingest.links import LinkState
from app.roles import Leading


def test_a_refused_link_is_failed_whatever_the_data() -> None:
    for private in (False, True):
        facts = Facts(private, LinkView.FAILED, "[code:135] Not authorized", 3, has_data=True)
        assert channel_status(facts) == (Status.FAILED, "[code:135] Not authorized")


def test_public_channels_are_fresh_while_pushes_come() -> None:
    assert channel_status(Facts(False, LinkView.CONNECTING, "connection refused")) == (
        Status.CONNECTING,
        "connection refused",
    )
    assert channel_status(Facts(False, LinkView.UP, has_data=True)) == (Status.LIVE, None)
    # Stale with the link up: no push came; with the link down: why it is down.
    assert channel_status(Facts(False, LinkView.UP, has_data=True, stale=True)) == (Status.STALE, NO_UPDATE)
    assert channel_status(
        Facts(False, LinkView.CONNECTING, "connection refused", 1, has_data=True, stale=True)
    ) == (Status.STALE, "connection refused")
    assert channel_status(Facts(False, LinkView.CONNECTING, None, 1, has_data=True, stale=True)) == (
        Status.STALE,
        NO_UPDATE,
    )


def test_private_channels_are_as_fresh_as_their_link() -> None:
    assert channel_status(Facts(True, LinkView.UP)) == (Status.LIVE, None)  # silence is normal
    assert channel_status(Facts(True, LinkView.CONNECTING, "refused", 0)) == (Status.CONNECTING, "refused")
    assert channel_status(Facts(True, LinkView.CONNECTING, "dropped", 2, has_data=True)) == (Status.STALE, "dropped")
    assert channel_status(Facts(True, None)) == (Status.CONNECTING, None)


def test_readiness_wants_pinned_channels_live_and_none_stale_or_failed() -> None:
    assert readiness([Judged("a", True, Status.LIVE, None), Judged("b", False, Status.CONNECTING, None)]) == (True, [])
    ready, problems = readiness([
        Judged("a", True, Status.CONNECTING, "connection refused"),
        Judged("b", False, Status.STALE, NO_UPDATE),
        Judged("c", False, Status.FAILED, None),
        Judged("d", False, Status.LIVE, None),
    ])
    assert not ready
    assert problems == ["a is connecting: connection refused", f"b is stale: {NO_UPDATE}", "c is failed"]


def test_a_change_is_news_except_a_first_connecting() -> None:
    assert not changed(None, Status.CONNECTING)
    assert changed(None, Status.LIVE)
    assert changed(Status.LIVE, Status.STALE)
    assert changed(Status.STALE, Status.CONNECTING)
    assert not changed(Status.LIVE, Status.LIVE)


class _Link:
    def __init__(self, state: LinkState, connects: int) -> None:
        self.state, self.connects, self.reason = state, connects, "refused" if connects else None


class _Upstream:
    def __init__(self, link: _Link | None) -> None:
        self.link = link

    def link_of(self, channel: object) -> _Link | None:
        return self.link


def test_a_private_channel_is_live_by_the_short_question_exactly_when_its_status_is_live() -> None:
    hub = Gateway(load_settings()).hub
    links = [None] + [_Link(state, connects) for state in LinkState for connects in (0, 3)]
    for channel in (parse_channel("assets"), parse_channel("orders"), parse_channel("fills")):
        for link in links:
            role = Leading(_Upstream(link), hub)  # type: ignore[arg-type]
            assert role.private_live(channel, 0) == (role.status(channel, 0)[0] is Status.LIVE), link
