"""The console's login: the API token, exchanged once for an HttpOnly, SameSite=Strict cookie."""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ota.api import sessions
from ota.api.auth import COOKIE, console_session, console_session_ok

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """Raised by console pages without a session; answered with a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def require_login(request: Request) -> None:
    if not console_session_ok(request):
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)


def login_redirect(request: Request, exc: LoginRequired) -> Response:
    return RedirectResponse(f"/login?next={quote(exc.next_path, safe='')}", status_code=303)


def _safe_next(value: str | None) -> str:
    # Only paths of this site: an open redirect would send a fresh login elsewhere.
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/firmware"
    return value


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    templates = request.app.state.templates
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next)})


@router.post("/login")
def login(
    request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = ""
) -> Response:
    expected: str = request.app.state.api_token
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        templates = request.app.state.templates
        context = {"next": _safe_next(next), "error": "That is not the API token."}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    hours = request.app.state.ctx.settings.console_session_hours
    response.set_cookie(
        COOKIE,
        sessions.issue(expected),
        max_age=int(hours * 3600),  # the server refuses it after that too (sessions.read)
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    found = console_session(request)
    if found is not None:  # a copy of the cookie must not outlive the logout
        sessions.revoke(request.app.state.ctx.engine, found)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response
