"""What every entry point needs, built lazily from Settings: database, store, Temporal client."""

from __future__ import annotations

from functools import cached_property

from sqlalchemy import Engine
from temporalio.client import Client

from ota.db.engine import make_engine
from ota.settings import Settings, get_settings
from ota.storage import FirmwareStore


class Context:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._temporal: Client | None = None

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def store(self) -> FirmwareStore:
        return FirmwareStore(self.settings)

    async def temporal(self) -> Client:
        if self._temporal is None:
            self._temporal = await Client.connect(
                self.settings.temporal_address, namespace=self.settings.temporal_namespace
            )
        return self._temporal
