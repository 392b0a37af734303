"""The FastAPI application: composes the routers; each area adds its own here."""

from __future__ import annotations

from fastapi import FastAPI

from ota.api import download
from ota.context import Context
from ota.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="ota", version="0.1.0")
    app.state.ctx = Context(settings)
    app.include_router(download.router)
    return app
