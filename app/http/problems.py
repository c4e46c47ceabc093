"""RFC 9457 problem answers: the one place where errors become HTTP."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.domain.errors import GatewayError, NotReady, Unauthorized

log = logging.getLogger("coinsuper_gateway.http")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://coinsuper-gateway.invalid/problems/"


def problem_response(
    status: int,
    title: str,
    detail: str,
    slug: str,
    *,
    headers: dict[str, str] | None = None,
    extensions: dict[str, object] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update(extensions or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_body(error: GatewayError) -> dict[str, object]:
    """The RFC 9457 members of an error, as REST answers and WebSocket error frames carry them."""
    return {
        "type": TYPE_BASE + error.type_slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **error.extensions(),
    }


def from_error(error: GatewayError) -> JSONResponse:
    headers = {}
    if isinstance(error, NotReady):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="coinsuper-gateway"'
    return JSONResponse(
        problem_body(error),
        status_code=error.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def install(app: FastAPI) -> None:
    """Answer every error, ours or the framework's, as a problem."""

    async def gateway_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return from_error(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(
            str(part) for part in first.get("loc", ()) if part not in ("query", "path")
        )
        message = str(first.get("msg", "invalid value"))
        return problem_response(
            400,
            "Invalid parameter",
            f"{where or 'request'}: {message}",
            "invalid-parameter",
            extensions={"parameter": where},
        )

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        detail = str(exc.detail) if exc.detail else title
        return problem_response(
            exc.status_code,
            title,
            detail,
            title.lower().replace(" ", "-"),
            headers=dict(exc.headers or {}),
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return problem_response(500, "Internal error", "the gateway failed to answer", "internal")

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
