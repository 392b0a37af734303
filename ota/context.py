"""What every entry point needs, built lazily from Settings: database, store, Temporal client."""

from __future__ import annotations

import asyncio
from functools import cached_property

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.runtime import Runtime

from ota.aio import until_ready
from ota.db.engine import make_engine
from ota.errors import Unavailable
from ota.ops.tracing import temporal_interceptors
from ota.settings import Settings, get_settings
from ota.storage import FirmwareStore
from ota.temporal import temporal_connect_options


class Context:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._temporal: Client | None = None
        # The SDK runtime the client is made with: None is the SDK's default; the worker's
        # exports the SDK's metrics (ota/ops/temporal_metrics.py). Set before the first connect.
        self.temporal_runtime: Runtime | None = None

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.resolved_database_url)

    def engine_if_open(self) -> Engine | None:
        """The engine if made already (a health check must not open, and migrate, one)."""
        return self.__dict__.get("engine")

    @cached_property
    def store(self) -> FirmwareStore:
        return FirmwareStore(self.settings)

    async def temporal(self) -> Client:
        if self._temporal is None:
            address = self.settings.temporal_address
            options = temporal_connect_options(self.settings)
            if self.temporal_runtime is not None:
                options["runtime"] = self.temporal_runtime
            if interceptors := temporal_interceptors():  # tracing, when on (ota/ops/tracing.py)
                options["interceptors"] = interceptors
            try:
                self._temporal = await Client.connect(address, **options)
            except RuntimeError as exc:  # the SDK's "Failed client connect: <why>"
                # The SDK's reason tells a stopped server from a TLS or API-key mismatch.
                raise Unavailable(
                    f"Temporal is not reachable at {address} (OTA_TEMPORAL_ADDRESS): {exc}; "
                    "start it, e.g. with `ota dev`, or check the OTA_TEMPORAL_* TLS settings"
                ) from exc
        return self._temporal


async def open_database(context: Context, stop: asyncio.Event | None = None) -> Engine | None:
    """The engine, made (and the database migrated) once the database answers; None if
    stopped meanwhile. The worker and the bridge start so: PostgreSQL may be restarting too."""

    async def attempt() -> Engine:
        return await asyncio.to_thread(lambda: context.engine)

    return await until_ready("open the database", attempt, stop)
