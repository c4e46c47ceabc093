"""The simulated exchange's MQTT broker: amqtt, with the exchange's login rules.

amqtt runs the broker (TCP and WebSocket listeners in this process). Two
plugins of ours make it behave like Coinsuper's. :class:`ExchangeLogin` accepts
the published public login with a client id of the form
``md5(access_key) + md5(email) + md5(topic)`` for the demo account, and the
private login (client id = access key, user ``api_private``, password
``email,ts,md5(access_key,secret_key,email,ts)``) when its signature is right and
its time within the clock-skew window. :class:`ExchangeTopics` lets a public
session subscribe only to the topic its client id names, a private session only
to the account's private topics, and no client publish.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from app.config import PUBLISHED_PUBLIC_PASSWORD
from app.ingest.credentials import PRIVATE_USERNAME, md5hex, private_signature

log = logging.getLogger("coinsuper_gateway.simulator")


@dataclass(frozen=True, slots=True)
class DemoAccount:
    """The simulated exchange's one account."""

    access_key: str = "demo-access-key"
    secret_key: str = "demo-secret-key"
    email: str = "demouser@demo.domain"
    user_no: str = "1600000000000000000"


@dataclass
class _RulesConfig:
    access_key: str = ""
    email: str = ""
    secret_key: str = ""
    skew_s: float = 60.0
    private_topics: list[str] = field(default_factory=list)
    public_username: str = "api_subscriber"
    public_password: str = PUBLISHED_PUBLIC_PASSWORD


def private_refusal(config: Any, client_id: str, password: str, now_ms: int) -> str | None:
    """Why a private login is refused, or None when it is right."""
    if client_id != config.access_key:
        return "client id is not the access key"
    email, _, rest = password.partition(",")
    ts_text, _, signature = rest.partition(",")
    if email != config.email or not ts_text.isdigit():
        return "password is not 'email,ts,signature' for this account"
    ts = int(ts_text)
    if abs(now_ms - ts) > config.skew_s * 1000:
        return f"signature time is {abs(now_ms - ts) / 1000:.0f} s off the exchange's clock"
    expected = private_signature(config.access_key, config.secret_key, email, ts)
    if not hmac.compare_digest(signature, expected):
        return "signature is wrong"
    return None


def _id_prefix(config: Any) -> str:
    return md5hex(config.access_key) + md5hex(config.email)


class ExchangeLogin(BaseAuthPlugin):  # type: ignore[misc]
    """Accept the exchange's public login for the demo account, nothing else."""

    Config = _RulesConfig

    async def authenticate(self, *, session: Session) -> bool:
        config = self.context.config
        client_id = session.client_id or ""
        if session.username == PRIVATE_USERNAME:
            refusal = private_refusal(
                config, client_id, session.password or "", time.time_ns() // 1_000_000
            )
            if refusal is not None:
                log.info("refused a private login: %s", refusal)
            return refusal is None
        accepted = (
            session.username == config.public_username
            and session.password == config.public_password
            and len(client_id) == 96
            and client_id.startswith(_id_prefix(config))
        )
        if not accepted:
            log.info("refused a login as %r with client id %r", session.username, client_id[:96])
        return accepted


class ExchangeTopics(BaseTopicPlugin):  # type: ignore[misc]
    """A public session subscribes only to the topic its client id names."""

    Config = _RulesConfig

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        if action == Action.RECEIVE:
            return True
        if action == Action.PUBLISH or session is None or topic is None:
            return False
        client_id = session.client_id or ""
        if session.username == PRIVATE_USERNAME:
            allowed = topic in self.context.config.private_topics
        else:
            allowed = len(client_id) == 96 and client_id[64:] == md5hex(topic)
        if not allowed:
            log.info("refused a subscription to %s by client id %s", topic[:200], client_id[:96])
        return allowed


@dataclass
class BrokerPorts:
    host: str = "127.0.0.1"
    tcp: int = 18830
    ws: int = 18831


def make_broker(
    account: DemoAccount, ports: BrokerPorts, private_topics: list[str], skew_s: float = 60.0
) -> Broker:
    """An amqtt broker with a TCP and a WebSocket listener and the exchange's rules."""
    rules = {
        "access_key": account.access_key,
        "email": account.email,
        "secret_key": account.secret_key,
        "skew_s": skew_s,
        "private_topics": private_topics,
    }
    config = {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{ports.host}:{ports.tcp}"},
            "ws": {"type": "ws", "bind": f"{ports.host}:{ports.ws}"},
        },
        "plugins": {
            f"{__name__}.ExchangeLogin": rules,
            f"{__name__}.ExchangeTopics": rules,
        },
    }
    broker = Broker(config)
    broker._subscriptions = SnapshotDict(broker._subscriptions)
    return broker


class SnapshotDict(dict[str, Any]):
    """A dict whose iteration walks a copy of its keys or items.

    amqtt 0.12 iterates its subscription table and awaits inside the loop
    (``Broker._run_broadcast`` awaits the topic filter for every subscriber),
    so a client subscribing or unsubscribing meanwhile raised "dictionary
    changed size during iteration" and the broadcast was lost. The table is
    small (one entry per topic filter); copying it per broadcast is cheap.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())
