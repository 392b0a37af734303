"""`ota` subcommands: api (the HTTP server)."""

from __future__ import annotations

import typer
import uvicorn

from ota.api import access_log
from ota.api.app import create_app
from ota.settings import get_settings
from starter.common import setup_logging


def api(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Serve firmware downloads, the API and the console on OTA_HTTP_HOST:OTA_HTTP_PORT."""
    setup_logging(verbose)
    access_log.install()  # download URLs carry their signature: keep it out of the log
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.command("api")(api)
