"""Bearer tokens: who may read private data (and public data, when so configured).

Tokens come from ``GATEWAY_TOKENS`` and ``GATEWAY_TOKENS_FILE``. A presented
token is compared with every configured one in constant time (digests of equal
length, no early exit), so its timing says nothing about how close it came.
Browsers cannot set headers on ``EventSource``: streams also take the token as
``access_token`` in the query, which the log filter in :mod:`app.logs` removes
from every log line.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import HTTPConnection

from app.domain.errors import Unauthorized


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None if it is not one."""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def presented_token(request: HTTPConnection) -> str | None:
    """The bearer token a request carries (header, else ``access_token``), unchecked."""
    header = request.headers.get("authorization")
    if header:
        return bearer(header)
    return request.query_params.get("access_token") or None


class TokenCheck:
    """The configured tokens, kept only as digests."""

    def __init__(self, tokens: list[str]) -> None:
        self._digests = [_digest(token) for token in tokens]

    def accepts(self, presented: str) -> bool:
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def require(self, request: HTTPConnection, *, allow_query: bool = False) -> None:
        """Raise :class:`Unauthorized` unless the request carries a valid token."""
        presented = None
        header = request.headers.get("authorization")
        if header:
            presented = bearer(header)
            if presented is None:
                raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        elif allow_query:
            presented = request.query_params.get("access_token")
        if not presented:
            where = "an Authorization: Bearer header" + (
                " or the access_token query parameter" if allow_query else ""
            )
            raise Unauthorized(f"a bearer token is required: send {where}")
        if not self.accepts(presented):
            raise Unauthorized("the bearer token is not valid")
