"""Errors as RFC 9457 problem details: every ota.errors exception and FastAPI's own 4xx."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from temporalio.service import RPCError

from ota.api.schemas import CLOUD_NAMES
from ota.errors import Conflict, InvalidInput, NotFound, OtaError, Unavailable
from ota.temporal import is_transient

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 10  # Temporal's dev server or PostgreSQL restarts in about that
_TYPES = {
    InvalidInput: ("invalid-input", "Invalid input"),
    NotFound: ("not-found", "Not found"),
    Conflict: ("conflict", "Conflict"),
    Unavailable: ("unavailable", "Service unavailable"),
}
_SNAKE_NAMES = {cloud: name for name, cloud in CLOUD_NAMES.items()}
_HTTP_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    501: "Not implemented",
}


class Problem(Exception):
    """An HTTP error raised by the API itself (auth, unsupported): rendered as problem details."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        type_: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE
    )


def ota_error_response(exc: OtaError) -> JSONResponse:
    slug, title = next(
        ((s, t) for cls, (s, t) in _TYPES.items() if isinstance(exc, cls)), ("error", "Error")
    )
    field = getattr(exc, "field", None)
    detail = exc.message if isinstance(exc, InvalidInput) else str(exc)
    errors = [_entry(field, detail)] if field else None
    return problem_response(
        exc.status, title, detail, f"urn:ota:problem:{slug}", field=field, errors=errors
    )


def _entry(field: str, detail: str) -> dict[str, str]:
    """One error: our field name, and the cloud API's name for it when there is one."""
    entry = {"field": field, "detail": detail}
    if field in CLOUD_NAMES:
        entry["alias"] = CLOUD_NAMES[field]
    return entry


def _loc_field(loc: tuple[Any, ...]) -> str:
    """("body", "MaximumPerMinute") -> "rate_per_minute"; ("query", "limit") -> "limit"."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    if parts and parts[0] in _SNAKE_NAMES:
        parts[0] = _SNAKE_NAMES[parts[0]]
    return ".".join(parts) or "body"


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = [_entry(_loc_field(tuple(e.get("loc", ()))), e["msg"]) for e in exc.errors()]
    first = errors[0] if errors else {"field": "body", "detail": "invalid request"}
    return problem_response(
        422,
        "Invalid input",
        f"{first['field']}: {first['detail']}",
        "urn:ota:problem:invalid-input",
        field=first["field"],
        errors=errors,
    )


METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: Mapping[str, Any]) -> str:
    """Every method some route takes at this path. Starlette's 405 names only the first route
    that matched the path (GET /firmware), not the others at the same path (POST /firmware).
    Asked through Route.matches: FastAPI keeps included routers as routes of their own."""
    allowed = [
        method
        for method in METHODS
        if any(
            route.matches({**scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]
    return ", ".join(allowed)


def install(app: FastAPI, is_console: Any) -> None:
    """Register the handlers; `is_console(request)` picks HTML pages over problem JSON."""

    async def on_problem(request: Request, exc: Problem) -> Response:
        return problem_response(
            exc.status, exc.title, exc.detail, exc.type, exc.headers, **exc.extra
        )

    async def on_ota_error(request: Request, exc: OtaError) -> Response:
        if is_console(request):
            return await app.state.render_error(request, exc.status, str(exc))
        return ota_error_response(exc)

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        response = validation_response(exc)
        if is_console(request):  # a page, saying the same as the problem would
            detail = json.loads(bytes(response.body))["detail"]
            return await app.state.render_error(request, 422, detail)  # type: ignore[no-any-return]
        return response

    async def on_http(request: Request, exc: HTTPException) -> Response:
        if is_console(request) and exc.status_code == 404:
            return await app.state.render_error(request, 404, "There is no such page.")
        title = _HTTP_TITLES.get(exc.status_code, "HTTP error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(app, request.scope)
        return problem_response(exc.status_code, title, str(exc.detail), headers=headers)

    async def on_temporal_error(request: Request, exc: RPCError) -> Response:
        """Temporal restarting or overloaded: 503, and the client tries again; the cached
        client reconnects by itself, so the API needs no restart."""
        if not is_transient(exc):
            return await on_crash(request, exc)
        log.warning("Temporal unavailable for %s %s: %s", request.method, request.url.path, exc)
        error = Unavailable(f"Temporal is not reachable ({exc.status.name}); try again shortly")
        return await unavailable(request, error)

    async def on_database_error(request: Request, exc: OperationalError) -> Response:
        """The database restarting or out of reach: 503; the pool reconnects by itself. The
        driver's message names host and port only, but the first line is enough here."""
        first = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        log.warning("database unavailable for %s %s: %s", request.method, request.url.path, first)
        return await unavailable(request, Unavailable("the database is not reachable; try again"))

    async def unavailable(request: Request, error: Unavailable) -> Response:
        if is_console(request):
            return await app.state.render_error(request, error.status, str(error))
        response = ota_error_response(error)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    async def on_crash(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this answer; the client gets the same shape.
        detail = "an unexpected error; the server log has the details"
        return problem_response(500, "Internal server error", detail)

    app.add_exception_handler(Problem, on_problem)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_crash)
    app.add_exception_handler(OtaError, on_ota_error)  # type: ignore[arg-type]
    app.add_exception_handler(RPCError, on_temporal_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, on_database_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http)  # type: ignore[arg-type]
