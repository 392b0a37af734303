"""New devices' secrets, made at registration and put on the broker right after the commit."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from ota.errors import OtaError
from ota.identity.accounts import device_account
from ota.identity.control import ControlError
from ota.identity.secret_pool import Made, make_secrets, make_secrets_on_cores
from ota.identity.sync import sync_accounts
from ota.settings import Settings

log = logging.getLogger(__name__)

SYNCED, OFF = "synced", "off"
# A registration this large has its secrets made in a process per core: below it, starting the
# processes costs more than it saves.
POOL_FROM = 10_000


@dataclass
class Registered:
    """Devices just registered: their secrets (shown once) and what the database stores."""

    product_key: str
    secrets: dict[str, str] = field(default_factory=dict)
    stored: dict[str, str] = field(default_factory=dict)  # encrypted
    broker: str | None = None

    def __len__(self) -> int:
        return len(self.secrets)

    def publish(self, settings: Settings) -> str:
        """Create their broker users. A broker that does not answer does not undo the
        registration (the database is the truth): the answer says so, and `ota broker sync`
        finishes the job."""
        if settings.broker_auth == "none":
            self.broker = OFF
            return self.broker
        accounts = [device_account(self.product_key, n, s) for n, s in self.secrets.items()]
        try:
            sync_accounts(settings, accounts)
        except (OtaError, ControlError) as exc:
            log.warning("registered %d devices, but the broker was not updated: %s", len(self), exc)
            self.broker = f"not synced ({exc}); run `ota broker sync`"
        else:
            self.broker = SYNCED
        return self.broker


def register_secrets(settings: Settings, product_key: str, names: list[str]) -> Registered:
    key_secret = settings.resolved_key_encryption_secret
    registered = Registered(product_key)
    for name, secret, stored in _made(key_secret, product_key, names):
        registered.secrets[name] = secret
        registered.stored[name] = stored
    return registered


def _made(key_secret: bytes, product_key: str, names: list[str]) -> list[Made]:
    """Large registrations use every core (ota/identity/secret_pool.py)."""
    if len(names) < POOL_FROM or (os.cpu_count() or 1) < 2:
        return make_secrets(key_secret, product_key, names)
    try:
        return make_secrets_on_cores(key_secret, product_key, names)
    except (OSError, RuntimeError) as exc:  # no helper process: one core does it all
        log.warning("making secrets on one core: %s", exc)
        return make_secrets(key_secret, product_key, names)
