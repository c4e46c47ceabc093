"""Settings, read from the environment (docs/operating.md, "Configuration") and checked at start.

Every field is named after its environment variable, lower-cased, so that an
error names the variable a user must fix. :func:`load_settings` turns the first
validation error into one :class:`~app.domain.errors.ConfigError` line; the command
line prints it and exits with status 2. Secrets are :class:`SecretStr`, so the
repr of the settings never shows them.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.domain.channels import Channel, TopicTemplates, normalize_symbol, parse_channel
from app.domain.errors import ConfigError, GatewayError

# The public login's password, published in the exchange's document, the same
# for everyone (docs/upstream.md, "Credentials").
PUBLISHED_PUBLIC_PASSWORD = "da65be18f44b33b69603c39fd03ddf49"
URL_SCHEMES = ("mqtt", "mqtts", "ws", "wss")
_TOPICS = TopicTemplates()


# One line of help per setting, for `--help` and the README.
HELP: dict[str, str] = {
    "coinsuper_url": "upstream broker: mqtt://, mqtts://, ws:// or wss:// URL",
    "coinsuper_env": "topic prefix ($env)",
    "coinsuper_access_key": "API access key (public client ids; the private login)",
    "coinsuper_secret_key": "API secret key (signs the private login)",
    "coinsuper_email": "account e-mail (public client ids; private topics)",
    "coinsuper_public_username": "public login user",
    "coinsuper_public_password": "public login password (the published value)",
    "coinsuper_subscribe": "channels subscribed at start and never released, comma-separated",
    "coinsuper_shared_link": "all public topics on one connection (the exchange wants one per topic)",
    "coinsuper_qos": "subscription QoS: 0, 1 or 2",
    "coinsuper_keepalive_s": "MQTT keepalive, seconds",
    "coinsuper_reconnect_min_s": "first reconnect delay, seconds (doubles, jittered)",
    "coinsuper_reconnect_max_s": "longest reconnect delay, seconds",
    "coinsuper_silence_s": "a public link silent this long is taken as dead, seconds",
    "coinsuper_tls_ca_file": "trust this CA (PEM) for mqtts:// and wss:// instead of the system's",
    "coinsuper_tls_cert_file": "client certificate (PEM) for the upstream",
    "coinsuper_tls_key_file": "key (PEM) of the client certificate",
    "coinsuper_topic_depth": "depth topic template",
    "coinsuper_topic_orderbook": "order-book topic template",
    "coinsuper_topic_kline": "candle topic template",
    "coinsuper_topic_trades": "trade topic template",
    "coinsuper_topic_assets": "asset topic template",
    "coinsuper_topic_orders": "order topic template",
    "coinsuper_topic_fills": "fill topic template",
    "gateway_host": "listen address",
    "gateway_port": "listen port",
    "gateway_tokens": "bearer tokens for private data, comma-separated",
    "gateway_tokens_file": "file of bearer tokens, one a line",
    "gateway_require_token": "require a token on public routes too",
    "gateway_cors_origins": "origins allowed by CORS, comma-separated (none by default)",
    "gateway_closed_orders": "cancelled orders kept",
    "gateway_fill_log": "fills kept",
    "gateway_idle_release_s": "release a channel nobody used for this long, seconds",
    "gateway_max_upstream": "cap on upstream subscriptions",
    "gateway_max_channels_per_stream": "cap on channels in one stream",
    "gateway_max_streams": "cap on open streams",
    "gateway_max_streams_per_client": "cap on open streams of one token or address",
    "gateway_send_timeout_s": "close a stream whose connection stays full this long, seconds",
    "gateway_stale_factor": "stale after this many push intervals without a push",
    "gateway_heartbeat_s": "heartbeat on idle streams (an SSE comment, a WebSocket ping), seconds",
    "gateway_retry_ms": "retry: sent to EventSource clients, ms",
    "gateway_trade_log": "distinct trades kept per symbol",
    "gateway_candle_history": "candles kept per channel",
    "gateway_replay_events": "events kept for resuming streams",
    "gateway_replay_age_s": "age of the oldest event kept for resuming, seconds",
    "gateway_client_buffer": "log events a stream may miss while its connection is full, before it is closed",
    "gateway_wait_default_ms": "how long a first REST request waits for data, ms",
    "gateway_wait_max_ms": "the longest ?wait= allowed, ms",
    "gateway_log_level": "debug, info, warning or error",
    "gateway_log_format": "text or json (JSON lines)",
    "gateway_metric_symbols": "symbols named in metric labels besides the subscribed ones",
    "gateway_trusted_proxies": "addresses whose X-Forwarded-For is believed, comma-separated",
    "gateway_max_request_line": "longest request line, bytes (414 beyond)",
    "gateway_max_header_bytes": "largest request head, bytes (431 beyond)",
    "gateway_header_timeout_s": "a request head must be complete within this, seconds (408)",
    "gateway_keepalive_timeout_s": "an idle kept-alive connection is closed after this, seconds",
    "gateway_access_log": "log a line per HTTP request at info (false: none; the request metric counts them all the same)",
    "gateway_fast_routes": "answer REST snapshots of stored bytes in the connection layer (false: all through FastAPI)",
    "gateway_max_connections": "cap on open connections (0: the file limit less headroom)",
    "gateway_max_connections_per_address": "cap on open connections of one address",
    "gateway_stream_send_buffer": "kernel send buffer of a stream's socket, bytes",
    "gateway_stream_write_buffer": "bytes a stream may queue in the server before it is paused",
    "gateway_ws_max_message_bytes": "largest WebSocket message a client may send, bytes",
    "gateway_ws_ops_per_s": "WebSocket ops a connection may send per second (twice that in a burst)",
    "gateway_no_data_release_s": "release a channel that got no data this long after subscribing, seconds",
    "gateway_unknown_ttl_s": "how long a channel that never got data is answered 404, seconds",
    "gateway_max_pending_upstream": "cap on channels waiting for their first data at once",
    "gateway_max_clock_skew_s": "reject upstream timestamps this far ahead of the receive time, seconds",
    "gateway_redis_url": "redis://HOST:PORT/DB: run as one replica of a cluster sharing that Redis",
    "gateway_redis_sentinels": "HOST:PORT,HOST:PORT,…: the cluster's Redis found through these "
    "Sentinels, following every failover (instead of GATEWAY_REDIS_URL)",
    "gateway_redis_master": "the name the Sentinels monitor the cluster's Redis by",
    "gateway_redis_sentinel_password": "the Sentinels' password, where they need one",
    "gateway_redis_min_replicas": "Redis replicas that must hold a batch before the leader hands "
    "it out (default 1 with Sentinels, 0 without)",
    "gateway_redis_wait_ms": "how long the leader waits for them before handing a batch out "
    "all the same (counted), milliseconds",
    "gateway_node_id": "this replica's name in the cluster (default: host name and process id)",
    "gateway_cluster": "the cluster's name, the prefix of its Redis keys",
    "gateway_leader_ttl_ms": "the leader's lease in Redis, milliseconds (renewed every third)",
    "gateway_checkpoint_s": "how often the leader saves the whole state to Redis, seconds",
}


class Settings(BaseSettings):
    """Everything the gateway can be told, with the defaults docs/operating.md lists."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Upstream
    coinsuper_url: str = "wss://api-mqtt-premium.coinsuper.com:443/mqtt"
    coinsuper_env: str = "exchange_ha_prod_hk"
    coinsuper_access_key: SecretStr = SecretStr("")
    coinsuper_secret_key: SecretStr = SecretStr("")
    coinsuper_email: str = ""
    coinsuper_public_username: str = "api_subscriber"
    coinsuper_public_password: SecretStr = SecretStr(PUBLISHED_PUBLIC_PASSWORD)
    coinsuper_subscribe: str = ""
    coinsuper_shared_link: bool = False
    coinsuper_qos: int = Field(0, ge=0, le=2)
    coinsuper_keepalive_s: int = Field(60, ge=5, le=3600)
    coinsuper_reconnect_min_s: float = Field(0.5, gt=0, le=60)
    coinsuper_reconnect_max_s: float = Field(5.0, gt=0, le=600)
    coinsuper_silence_s: float = Field(10.0, gt=0, le=3600)
    coinsuper_tls_ca_file: str = ""
    coinsuper_tls_cert_file: str = ""
    coinsuper_tls_key_file: str = ""
    coinsuper_topic_depth: str = _TOPICS.depth
    coinsuper_topic_orderbook: str = _TOPICS.orderbook
    coinsuper_topic_kline: str = _TOPICS.kline
    coinsuper_topic_trades: str = _TOPICS.trades
    coinsuper_topic_assets: str = _TOPICS.assets
    coinsuper_topic_orders: str = _TOPICS.orders
    coinsuper_topic_fills: str = _TOPICS.fills

    # Downstream
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    gateway_tokens: SecretStr = SecretStr("")
    gateway_tokens_file: str = ""
    gateway_require_token: bool = False
    gateway_cors_origins: str = ""
    gateway_closed_orders: int = Field(1000, ge=0, le=1_000_000)
    gateway_fill_log: int = Field(1000, ge=1, le=1_000_000)
    gateway_idle_release_s: float = Field(300.0, ge=0)
    gateway_max_upstream: int = Field(64, ge=1, le=10_000)
    gateway_max_channels_per_stream: int = Field(50, ge=1, le=1000)
    gateway_max_streams: int = Field(20_000, ge=1)
    gateway_max_streams_per_client: int = Field(100, ge=1)
    gateway_send_timeout_s: float = Field(30.0, gt=0, le=3600)
    gateway_stale_factor: float = Field(5.0, ge=1, le=1000)
    gateway_heartbeat_s: float = Field(15.0, gt=0, le=3600)
    gateway_retry_ms: int = Field(2000, ge=0, le=600_000)
    gateway_trade_log: int = Field(1000, ge=50, le=1_000_000)
    gateway_candle_history: int = Field(1000, ge=1, le=1_000_000)
    gateway_replay_events: int = Field(100_000, ge=0, le=10_000_000)
    gateway_replay_age_s: float = Field(600.0, ge=0)
    gateway_client_buffer: int = Field(1000, ge=1, le=1_000_000)
    gateway_wait_default_ms: int = Field(2000, ge=0)
    gateway_wait_max_ms: int = Field(10_000, ge=0, le=120_000)
    gateway_log_level: str = "info"
    gateway_log_format: str = "text"
    gateway_metric_symbols: str = ""
    gateway_trusted_proxies: str = ""
    gateway_max_request_line: int = Field(8192, ge=256, le=1_048_576)
    gateway_max_header_bytes: int = Field(65536, ge=1024, le=16_777_216)
    gateway_header_timeout_s: float = Field(10.0, gt=0, le=600)
    gateway_keepalive_timeout_s: int = Field(5, ge=1, le=3600)
    gateway_access_log: bool = True
    gateway_fast_routes: bool = True
    gateway_max_connections: int = Field(0, ge=0)
    gateway_max_connections_per_address: int = Field(1000, ge=1)
    gateway_stream_send_buffer: int = Field(32768, ge=4096, le=16_777_216)
    gateway_stream_write_buffer: int = Field(32768, ge=1024, le=16_777_216)
    gateway_ws_max_message_bytes: int = Field(65536, ge=1024, le=16_777_216)
    gateway_ws_ops_per_s: float = Field(20.0, gt=0, le=10_000)
    gateway_no_data_release_s: float = Field(30.0, gt=0)
    gateway_unknown_ttl_s: float = Field(600.0, ge=0)
    gateway_max_pending_upstream: int = Field(16, ge=1, le=10_000)
    gateway_max_clock_skew_s: float = Field(300.0, gt=0)
    # A cluster of replicas on Redis
    gateway_redis_url: SecretStr = SecretStr("")
    gateway_redis_sentinels: str = ""
    gateway_redis_master: str = Field("", max_length=200, pattern=r"^[A-Za-z0-9_.:-]*$")
    gateway_redis_sentinel_password: SecretStr = SecretStr("")
    gateway_redis_min_replicas: int | None = Field(None, ge=0, le=16)
    gateway_redis_wait_ms: int = Field(200, ge=1, le=60_000)
    gateway_node_id: str = Field("", max_length=100, pattern=r"^[A-Za-z0-9_.:-]*$")
    gateway_cluster: str = Field(
        "coinsuper", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    gateway_leader_ttl_ms: int = Field(3000, ge=300, le=600_000)
    gateway_checkpoint_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("coinsuper_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in URL_SCHEMES or not parts.hostname:
            raise ValueError(
                f"'{value[:80]}' is not an upstream URL; allowed: "
                + ", ".join(f"{s}://HOST[:PORT][/PATH]" for s in URL_SCHEMES)
            )
        try:
            parts.port  # noqa: B018  (reading it checks it)
        except ValueError:
            raise ValueError(f"'{value[:80]}' has a port that is not a number") from None
        return value

    @field_validator("coinsuper_subscribe")
    @classmethod
    def _check_channels(cls, value: str) -> str:
        for name in filter(None, (part.strip() for part in value.split(","))):
            try:
                parse_channel(name)
            except GatewayError as exc:
                raise ValueError(exc.detail) from None
        return value

    @field_validator("gateway_redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text and urlsplit(text).scheme not in ("redis", "rediss", "unix"):
            # The URL may hold a password: only its scheme is shown.
            raise ValueError(
                f"a URL of scheme '{urlsplit(text).scheme[:20]}' is not a Redis URL; "
                "allowed: redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://…, unix://PATH"
            )
        return value

    @field_validator("gateway_redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        _addresses(value)
        return value

    @model_validator(mode="after")
    def _check_redis(self) -> Settings:
        if self.gateway_redis_url.get_secret_value() and self.sentinels:
            raise ValueError(
                "GATEWAY_REDIS_URL and GATEWAY_REDIS_SENTINELS are both set; allowed: one of them "
                "(a single Redis, or the Sentinels of a replicated one)"
            )
        if self.sentinels and not self.gateway_redis_master:
            raise ValueError(
                "GATEWAY_REDIS_SENTINELS needs GATEWAY_REDIS_MASTER: the name the Sentinels "
                "monitor the Redis by"
            )
        if self.gateway_redis_master and not self.sentinels:
            raise ValueError("GATEWAY_REDIS_MASTER is set without GATEWAY_REDIS_SENTINELS")
        return self

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinels' addresses (GATEWAY_REDIS_SENTINELS)."""
        return _addresses(self.gateway_redis_sentinels)

    @property
    def clustered(self) -> bool:
        """Whether this process is a replica of a cluster (on a Redis, or Sentinels)."""
        return bool(self.gateway_redis_url.get_secret_value() or self.sentinels)

    @property
    def redis_min_replicas(self) -> int:
        """GATEWAY_REDIS_MIN_REPLICAS, or its default: 1 with Sentinels, 0 without."""
        if self.gateway_redis_min_replicas is not None:
            return self.gateway_redis_min_replicas
        return 1 if self.sentinels else 0

    @field_validator("gateway_log_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value.lower() not in ("text", "json"):
            raise ValueError(f"'{value[:20]}' is not a log format; allowed: text, json")
        return value.lower()

    @field_validator("gateway_log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        levels = ("debug", "info", "warning", "error")
        if value.lower() not in levels:
            raise ValueError(f"'{value[:20]}' is not a log level; allowed: {', '.join(levels)}")
        return value.lower()

    # --- derived -----------------------------------------------------------

    @property
    def subscribe_channels(self) -> list[Channel]:
        names = (part.strip() for part in self.coinsuper_subscribe.split(","))
        return list(dict.fromkeys(parse_channel(name) for name in names if name))

    @property
    def topics(self) -> TopicTemplates:
        return TopicTemplates(
            depth=self.coinsuper_topic_depth,
            orderbook=self.coinsuper_topic_orderbook,
            kline=self.coinsuper_topic_kline,
            trades=self.coinsuper_topic_trades,
            assets=self.coinsuper_topic_assets,
            orders=self.coinsuper_topic_orders,
            fills=self.coinsuper_topic_fills,
        )

    @field_validator("coinsuper_tls_ca_file", "coinsuper_tls_cert_file", "coinsuper_tls_key_file")
    @classmethod
    def _check_tls_file(cls, value: str) -> str:
        return _readable(value)

    @field_validator("gateway_trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"'{part[:60]}' is not an address or network") from None
        return value

    @property
    def trusted_proxies(self) -> list[str]:
        return [part.strip() for part in self.gateway_trusted_proxies.split(",") if part.strip()]

    @field_validator("gateway_tokens_file")
    @classmethod
    def _check_tokens_file(cls, value: str) -> str:
        return _readable(value)

    @property
    def tokens(self) -> list[str]:
        """Bearer tokens: from GATEWAY_TOKENS, and one a line from GATEWAY_TOKENS_FILE."""
        raw = self.gateway_tokens.get_secret_value().split(",")
        if self.gateway_tokens_file:
            with open(self.gateway_tokens_file, encoding="utf-8") as handle:
                raw.extend(handle.read().splitlines())
        return [token.strip() for token in raw if token.strip() and not token.startswith("#")]

    @property
    def private_configured(self) -> bool:
        """The private feed needs the access key, the secret key and the e-mail."""
        return bool(
            self.coinsuper_access_key.get_secret_value()
            and self.coinsuper_secret_key.get_secret_value()
            and self.coinsuper_email
        )

    @property
    def metric_symbols(self) -> set[str]:
        """Symbols named in metric labels: those configured at start."""
        names = {c.symbol for c in self.subscribe_channels if c.symbol}
        for part in self.gateway_metric_symbols.split(","):
            if part.strip():
                names.add(normalize_symbol(part))
        return names

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.gateway_cors_origins.split(",") if origin.strip()]


def _readable(path: str) -> str:
    """A file setting: empty, or a file this process can read."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                handle.read(1)
        except OSError as exc:
            raise ValueError(f"cannot read '{path[:200]}': {exc.strerror}") from None
    return path


def _addresses(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT,…`` (an IPv6 host in brackets) as (host, port) pairs, or
    ValueError naming the first that is not one."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{part[:60]}' is not a Sentinel's address; allowed: HOST:PORT,…")
        out.append((host.strip("[]"), int(port)))
    return out


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (overrides win), or raise
    :class:`ConfigError` with one line naming the variable, the problem and
    what is allowed."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a check of several settings names them itself
            raise ConfigError(message) from None
        raise ConfigError(f"{str(error['loc'][0]).upper()}: {message}") from None
