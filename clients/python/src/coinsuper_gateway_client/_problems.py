"""What the gateway answers when it refuses: an RFC 9457 problem."""

from __future__ import annotations

from typing import Any

import httpx


class GatewayError(Exception):
    """The gateway answered a problem (``application/problem+json``).

    ``problem`` holds its fields: ``type``, ``title``, ``status``, ``detail``,
    and where they apply ``parameter``/``allowed`` (what was wrong and what is
    allowed) or ``limit``/``cap`` (the cap that was reached).
    """

    def __init__(self, problem: dict[str, Any], retry_after: float | None = None) -> None:
        super().__init__(f"{problem.get('status')} {problem.get('title')}: {problem.get('detail')}")
        self.problem = problem
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        status = self.problem.get("status")
        return status if isinstance(status, int) else 0


def refused(response: httpx.Response) -> GatewayError:
    """The error of a 4xx or 5xx answer: its problem, or, from something that
    is not the gateway (a proxy's HTML page), its status and reason."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"status": response.status_code, "title": response.reason_phrase, "detail": ""}
    retry = response.headers.get("retry-after")
    return GatewayError(problem, float(retry) if retry and retry.isdigit() else None)
