"""The gateway's own errors, and the one place that says what each means.

    GatewayError
    ├── InvalidInput      a client sent a value outside what is allowed  → 400
    ├── TooMany           a client reached a cap                         → 429
    ├── Unauthorized      missing or wrong bearer token                  → 401
    ├── NotConfigured     the feed asked for is not configured           → 404
    ├── UnknownChannel    the exchange sent no data for a channel        → 404
    └── NotReady          a channel has no data yet                      → 503

Upstream faults never become exceptions that reach a client: a bad payload is a
:class:`app.domain.decode.Rejection` (a value), a broken link is a state of
:class:`app.ingest.links.UpstreamLink`. The HTTP side turns each error here into an
RFC 9457 problem; the text of an error is written for the client and holds no
secret and no stack trace.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway answers to a client."""

    status = 500
    title = "Internal error"
    type_slug = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extensions(self) -> dict[str, object]:
        """Extra members of the problem body."""
        return {}


class InvalidInput(GatewayError):
    """A parameter outside its allowed values; names the parameter and what is allowed."""

    status = 400
    title = "Invalid parameter"
    type_slug = "invalid-parameter"

    def __init__(self, parameter: str, problem: str, allowed: str) -> None:
        super().__init__(f"{parameter}: {problem}; allowed: {allowed}")
        self.parameter = parameter
        self.allowed = allowed

    def extensions(self) -> dict[str, object]:
        return {"parameter": self.parameter, "allowed": self.allowed}


class TooMany(GatewayError):
    """A cap was reached (channels per stream, streams, upstream subscriptions)."""

    status = 429
    title = "Limit reached"
    type_slug = "limit-reached"

    def __init__(self, cap_name: str, problem: str, cap: int) -> None:
        super().__init__(f"{problem}; the cap on {cap_name} is {cap}")
        self.cap_name = cap_name
        self.cap = cap

    def extensions(self) -> dict[str, object]:
        return {"limit": self.cap_name, "cap": self.cap}


class Unauthorized(GatewayError):
    """Missing or wrong bearer token."""

    status = 401
    title = "Unauthorized"
    type_slug = "unauthorized"


class NotConfigured(GatewayError):
    """The private feed (or another optional part) is not configured."""

    status = 404
    title = "Not configured"
    type_slug = "not-configured"


class UnknownChannel(GatewayError):
    """A channel the exchange sent no data for when it was last subscribed:
    most likely a symbol or step that does not exist there."""

    status = 404
    title = "No data from the exchange"
    type_slug = "unknown-channel"


class NotReady(GatewayError):
    """A channel has no data yet; the client should come back after ``retry_after`` s."""

    status = 503
    title = "No data yet"
    type_slug = "no-data-yet"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ClusterUnavailable(NotReady):
    """The cluster's Redis cannot be reached to answer."""

    title = "The cluster cannot be reached"
    type_slug = "cluster-unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, retry_after=1)


class ConfigError(Exception):
    """A setting has a wrong value; the message is the one line printed at start."""
