"""Requests counted by route template, status and time to the last byte of the answer.

A pure ASGI middleware (no BaseHTTPMiddleware: it would copy every streamed download through
another task). The label is the matched route's template, /download/{firmware_id}, never the
path, which carries ids and signatures: the label set stays as small as the route table.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ota.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

UNMATCHED = "unmatched"  # no route took the request: a 404 from the router, say
# Clients may send any method name; the label takes these, and "other".
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def route_template(scope: Scope, root_path: str) -> str:
    """The template of the route that took the request, which the router puts in the scope; a
    mount (/static) sets none but adds its prefix to the scope's root_path."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    mounted = str(scope.get("root_path", ""))[len(root_path) :]
    return mounted or UNMATCHED


class HttpMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")  # the server's (behind a proxy), before any mount
        status = 500  # what the client gets if the app raises before answering

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = route_template(scope, root_path)
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
