"""The FastAPI application: composes the routers; each area adds its own here."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ota.api import (
    batches,
    console,
    console_auth,
    devices,
    download,
    firmware,
    http_metrics,
    metrics_route,
    ops,
    problems,
    products,
    security,
    storage_outage,
    verifications,
)
from ota.api.auth import resolve_token
from ota.context import Context
from ota.ops.tracing import instrument_app
from ota.settings import Settings
from ota.storage import format_size

HERE = Path(__file__).parent
API_PATHS = ("/api/", "/download/", "/openapi.json")

DESCRIPTION = """Firmware over the air for MQTT device fleets: products, devices, firmware,
verifications, static and dynamic batches, their tasks, cancel.

Every `/api/v1` operation takes `Authorization: Bearer <OTA_API_TOKEN>`. Errors are RFC 9457
problem details whose `field` names the input at fault. Request bodies take our snake_case
names or the cloud API's names (`TargetSelection`, `GrayPercent`, `MaximumPerMinute`, ...)."""


def _is_console(request: Request) -> bool:
    return not request.url.path.startswith(API_PATHS)


def _when(value: datetime | str | None) -> str:
    """Times as the seed writes them, 2026/12/01 10:00:00, in UTC."""
    if not value:
        return ""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    at = at.astimezone(UTC) if at.tzinfo else at
    return f"{at:%Y/%m/%d %H:%M:%S}"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["when"] = _when
    templates.env.filters["size"] = format_size
    return templates


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="ota",
        version="0.1.0",
        description=DESCRIPTION,
        # Swagger UI and ReDoc load from a CDN; the machines this runs on may have no internet.
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = Context(settings)
    app.state.file_info = download.FileInfoCache(app.state.ctx)
    app.state.storage_outage = storage_outage.StorageOutage()
    storage_outage.install_log_filter()
    app.state.api_token = resolve_token(settings)
    app.state.templates = _templates()

    async def render_error(request: Request, status: int, message: str) -> Response:
        return app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
            request, "error.html", {"status": status, "message": message}, status_code=status
        )

    app.state.render_error = render_error
    problems.install(app, _is_console)
    app.add_exception_handler(console_auth.LoginRequired, console_auth.login_redirect)  # type: ignore[arg-type]

    app.add_middleware(http_metrics.HttpMetrics)
    metrics_route.install(app)  # Prometheus: no bearer token either
    app.include_router(download.router)  # devices: its own signed URLs, no bearer token
    app.include_router(ops.router)  # /healthz, /readyz: no token, for load balancers
    for area in (products, devices, firmware, verifications, batches, security):
        app.include_router(area.router)
    app.include_router(console_auth.router)
    app.include_router(console.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    instrument_app(app)  # when tracing is on (ota/ops/tracing.py)
    return app
