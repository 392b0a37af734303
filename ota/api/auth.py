"""Bearer-token auth for the API; the console's HttpOnly login cookie stands in for the token."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ota.api import sessions
from ota.api.problems import Problem
from ota.api.sessions import ConsoleSession
from ota.settings import Settings, secret_file

log = logging.getLogger(__name__)

COOKIE = "ota_session"
# The console's scripts send this header with the cookie. A cross-site page cannot add a custom
# header without a CORS preflight we never grant, so the cookie alone cannot be ridden (CSRF).
CONSOLE_HEADER = "X-OTA-Console"
TOKEN_FILE = "api-token"  # under OTA_HOME, the file `ota dev` keeps its generated token in

bearer = HTTPBearer(auto_error=False, description="OTA_API_TOKEN (`ota dev` prints it)")


def resolve_token(settings: Settings) -> str:
    """OTA_API_TOKEN, else the installation's token file (created once): never an open API."""
    if settings.api_token:
        return settings.api_token
    path = settings.home / TOKEN_FILE
    token = secret_file(path, 24)  # two processes starting together agree on one token
    log.warning("OTA_API_TOKEN is not set: the API and console take the token in %s", path)
    return token


def _token(request: Request) -> str:
    return request.app.state.api_token  # type: ignore[no-any-return]


def console_session(request: Request) -> ConsoleSession | None:
    """The session the request's cookie names, if signed by us and not expired (no database)."""
    hours = request.app.state.ctx.settings.console_session_hours
    return sessions.read(_token(request), request.cookies.get(COOKIE, ""), hours)


def console_session_ok(request: Request) -> bool:
    """A signed, unexpired session that was not logged out. Reads the database: blocking."""
    found = console_session(request)
    return found is not None and not sessions.is_revoked(request.app.state.ctx.engine, found)


def unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = 'Bearer realm="ota"' + (f', error="{error}"' if error else "")
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """The API's guard: `Authorization: Bearer <token>`, or the console's cookie and header."""
    if request.headers.get("authorization"):
        if credentials is not None and hmac.compare_digest(
            credentials.credentials.encode(), _token(request).encode()
        ):
            return
        raise unauthorized("the bearer token is not valid", "invalid_token")
    console = bool(request.headers.get(CONSOLE_HEADER))
    # console_session_ok reads the database: off the event loop.
    if console and await run_in_threadpool(console_session_ok, request):
        return
    raise unauthorized("send Authorization: Bearer <OTA_API_TOKEN>")
