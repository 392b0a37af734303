"""`ota` subcommands: api (the HTTP server)."""

from __future__ import annotations

import typer
import uvicorn

from ota.api import access_log
from ota.api.app import create_app
from ota.settings import get_settings
from starter.common import setup_logging, setup_tracing


def api(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Serve firmware downloads, the API and the console on OTA_HTTP_HOST:OTA_HTTP_PORT."""
    setup_logging(verbose)
    setup_tracing("ota-api")
    access_log.install()  # download URLs carry their signature: keep it out of the log
    settings = get_settings()
    # JSON lines: uvicorn's loggers go through ours rather than its own text handlers.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=log_config,
    )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.command("api")(api)
