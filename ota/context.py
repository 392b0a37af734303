"""What every entry point needs, built lazily from Settings: database, store, Temporal client."""

from __future__ import annotations

from functools import cached_property

from sqlalchemy import Engine
from temporalio.client import Client

from ota.db.engine import make_engine
from ota.errors import Unavailable
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
            address = self.settings.temporal_address
            try:
                self._temporal = await Client.connect(
                    address, namespace=self.settings.temporal_namespace
                )
            except RuntimeError as exc:  # the SDK's "Failed client connect"
                raise Unavailable(
                    f"Temporal is not reachable at {address} (OTA_TEMPORAL_ADDRESS): "
                    "start it, e.g. with `ota dev`"
                ) from exc
        return self._temporal
