"""The operations endpoints of the worker and the bridge: /metrics, /healthz, /readyz.

The API serves the same three routes on its own port (ota/api/ops.py); these two processes
serve no HTTP otherwise, so they get a small Starlette app run by uvicorn on the process's
own event loop, on the port their settings name (OTA_WORKER_METRICS_PORT,
OTA_BRIDGE_METRICS_PORT). Off when the port is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ota.ops.checks import CheckFn, run_checks

log = logging.getLogger(__name__)


def metrics_response(registry: CollectorRegistry = REGISTRY) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def readiness_response(checks: Sequence[tuple[str, CheckFn]]) -> JSONResponse:
    """200 when every dependency answers, else 503; either way, each check's answer."""
    results = await run_checks(checks)
    ready = all(c.ok for c in results)
    body = {"ready": ready, "checks": [c.as_dict() for c in results]}
    return JSONResponse(body, status_code=200 if ready else 503)


def ops_app(
    checks: Sequence[tuple[str, CheckFn]], registry: CollectorRegistry = REGISTRY
) -> Starlette:
    async def metrics(request: Request) -> Response:
        # Off the event loop: the worker's collector fetches the Temporal SDK's metrics over
        # HTTP (up to 1 s when it hangs), and the worker's pushes share this loop.
        return await asyncio.to_thread(metrics_response, registry)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"alive": True})

    async def readyz(request: Request) -> Response:
        return await readiness_response(checks)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )


class _SignalFreeServer(uvicorn.Server):
    """Leaves SIGINT and SIGTERM to the process (ota/shutdown.py), which stops this server with
    the rest. uvicorn's own handlers (capture_signals, since 0.29; install_signal_handlers, which
    this once replaced, is gone) would take them from the worker and the bridge while it runs."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_ops(
    host: str, port: int | None, checks: Sequence[tuple[str, CheckFn]]
) -> AsyncIterator[uvicorn.Server | None]:
    """Serve the ops endpoints while the block runs; nothing when `port` is None."""
    if port is None:
        yield None
        return
    config = uvicorn.Config(
        ops_app(checks), host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = _SignalFreeServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():  # the port is taken, say: fail loudly, not run unwatched
        task.result()
        raise RuntimeError(f"metrics server on {host}:{port} did not start")
    log.info("serving /metrics, /healthz and /readyz on http://%s:%d", host, port)
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
