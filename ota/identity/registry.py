"""New devices' secrets, made at registration and put on the broker right after the commit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ota.errors import OtaError
from ota.identity.accounts import device_account
from ota.identity.control import ControlError
from ota.identity.credentials import encrypt_secret, new_device_secret
from ota.identity.sync import sync_accounts
from ota.settings import Settings

log = logging.getLogger(__name__)

SYNCED, OFF = "synced", "off"


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
    for name in names:
        secret = new_device_secret()
        registered.secrets[name] = secret
        registered.stored[name] = encrypt_secret(secret, key_secret, product_key, name)
    return registered
