"""Make the broker's users and ACLs agree with the device registry (the source of truth).

`sync_broker` reads the devices (all, or the few a registration change touched), works out what
the broker lacks or holds wrongly, and sends only that: a user whose credentials and state are
already right is left alone, since the plugin drops a user's live connection when they change.
The broker's plugin is ours (`ota_auth`) or Mosquitto's dynamic-security (`dynsec`), as
OTA_BROKER_AUTH says; the planning here is shared. So a sync is idempotent, cheap when nothing
changed, and rebuilds a broker that lost its state. Full syncs also delete the device users of
devices no longer registered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import aiomqtt
from sqlalchemy import Engine, tuple_, update
from sqlmodel import Session, col, select

from ota.db.engine import session_scope
from ota.db.models import Device
from ota.errors import Unavailable
from ota.identity.accounts import (
    Account,
    ServiceRole,
    broker_endpoint,
    device_account,
    service_account,
    service_endpoint,
)
from ota.identity.control import BrokerUsers, Command
from ota.identity.credentials import (
    decrypt_secret,
    device_of_username,
    encrypt_secret,
    new_device_secret,
    username_of,
)
from ota.identity.dynsec import DynsecUsers
from ota.identity.ota_auth import OtaAuthUsers
from ota.mqtt import redact
from ota.settings import Settings

log = logging.getLogger(__name__)

DeviceKey = tuple[str, str]  # (product key, device name)


@dataclass
class SyncReport:
    devices: int = 0  # device users the sync looked at
    created: int = 0
    updated: int = 0  # password, client id or role put right
    disabled: int = 0
    enabled: int = 0
    deleted: int = 0
    secrets_created: int = 0  # devices registered before device identity existed
    anonymous_refused: bool | None = None  # checked before anything is sent

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.disabled + self.enabled + self.deleted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync_broker(
    engine: Engine,
    settings: Settings,
    devices: Iterable[DeviceKey] | None = None,
    deleted: Iterable[DeviceKey] = (),
) -> SyncReport:
    """Full sync with `devices` None; else only those devices (and remove the `deleted` ones).
    A no-op when broker authentication is off. Raises Unavailable if the broker does not answer.
    """
    if settings.broker_auth == "none":
        return SyncReport()
    keys = None if devices is None else list(devices)
    report = SyncReport()
    accounts = _device_accounts(engine, settings, keys, report)
    return _run(_sync_tier(settings, accounts, keys is None, list(deleted), report))


def sync_accounts(
    settings: Settings, accounts: list[Account], deleted: Iterable[DeviceKey] = ()
) -> SyncReport:
    """Put these device users on the broker (registration, which has the secrets at hand)."""
    if settings.broker_auth == "none":
        return SyncReport()
    report = SyncReport(devices=len(accounts))
    return _run(_sync_tier(settings, accounts, False, list(deleted), report))


def _run(coro: Any) -> Any:
    """Services are synchronous (the CLI, the API's threads): the broker conversation runs to
    its end here; called from inside an event loop, on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _device_accounts(
    engine: Engine, settings: Settings, keys: list[DeviceKey] | None, report: SyncReport
) -> list[Account]:
    key_secret = settings.resolved_key_encryption_secret
    with session_scope(engine) as session:
        rows = _devices(session, keys)
        fresh = [r for r in rows if r.secret_enc is None]
        if fresh:  # registered before device identity: give them a secret now
            for row in fresh:
                row.secret_enc = encrypt_secret(
                    new_device_secret(), key_secret, row.product_key, row.name
                )
            # One executemany (ORM bulk update by primary key), not a statement per device.
            session.execute(
                update(Device), [{"id": r.id, "secret_enc": r.secret_enc} for r in fresh]
            )
            report.secrets_created = len(fresh)
            log.info("made secrets for %d devices registered before device identity", len(fresh))
    accounts = []
    for row in rows:
        assert row.secret_enc is not None
        secret = decrypt_secret(row.secret_enc, key_secret, row.product_key, row.name)
        accounts.append(device_account(row.product_key, row.name, secret, row.enabled))
    report.devices = len(accounts)
    return accounts


@dataclass
class _Row:
    id: int
    product_key: str
    name: str
    enabled: bool
    secret_enc: str | None


def _devices(session: Session, keys: list[DeviceKey] | None) -> list[_Row]:
    # sqlmodel's select is typed for up to four columns.
    query = select(  # type: ignore[call-overload]
        Device.id, Device.product_key, Device.name, Device.enabled, Device.secret_enc
    )
    if keys is not None:
        if not keys:
            return []
        query = query.where(tuple_(col(Device.product_key), col(Device.name)).in_(keys))
    return [_Row(*r) for r in session.exec(query)]  # type: ignore[call-overload]


def broker_users(settings: Settings) -> BrokerUsers:
    """The admin connection to the plugin `OTA_BROKER_AUTH` names."""
    admin = service_endpoint(settings, ServiceRole.ADMIN)
    timeout = settings.broker_timeout_seconds
    if settings.broker_auth == "dynsec":
        return DynsecUsers(admin, timeout)
    return OtaAuthUsers(admin, timeout)


def tier_brokers(settings: Settings) -> list[Settings]:
    """The broker OTA_MQTT_URL names and, in a broker tier, each leaf (OTA_BROKER_LEAF_URLS):
    every one holds the same users, so a device may sign in at any leaf."""
    leaves = [settings.model_copy(update={"mqtt_url": url}) for url in settings.leaf_urls]
    return [settings, *leaves]


async def _sync_tier(
    settings: Settings,
    accounts: list[Account],
    full: bool,
    deleted: list[DeviceKey],
    report: SyncReport,
) -> SyncReport:
    """`_sync` on every broker of the tier; the report is the hub's (each leaf's changes are
    logged: a leaf that lost its users, say, shows there)."""
    hub, *leaves = tier_brokers(settings)
    await _sync(hub, accounts, full, deleted, report)
    # The leaves side by side: each is a broker process of its own.
    reports = [SyncReport(devices=report.devices) for _ in leaves]
    await asyncio.gather(
        *(_sync(s, accounts, full, deleted, r) for s, r in zip(leaves, reports, strict=True))
    )
    for leaf, changed in zip(leaves, reports, strict=True):
        if changed.changed:
            log.info("leaf %s: %s", redact(leaf.mqtt_url), changed.to_dict())
    return report


async def _sync(
    settings: Settings,
    accounts: list[Account],
    full: bool,
    deleted: list[DeviceKey],
    report: SyncReport,
) -> SyncReport:
    # A broker that lets anyone in enforces nothing, and never answers the plugin's topic:
    # say so at once rather than after a timeout.
    report.anonymous_refused = await _refuses_anonymous(settings)
    if not report.anonymous_refused:
        raise Unavailable(
            f"the broker at {redact(settings.mqtt_url)} accepts anonymous clients, so it does "
            "not enforce device identity: configure it (`ota broker config`, "
            "docs/security.md), or set OTA_BROKER_AUTH=none to leave its users alone"
        )
    async with broker_users(settings) as broker:
        commands: list[Command] = []
        if full:
            commands += broker.setup()
            roles = [ServiceRole.BRIDGE, ServiceRole.WORKER]
            roles += [ServiceRole.LEAF] if settings.leaf_urls else []  # the leaves' bridges
            services = [service_account(settings, r) for r in roles]
            accounts = services + accounts
            existing = await broker.existing(None)
        else:
            existing = await broker.existing([a.username for a in accounts])
        commands += broker.plan(accounts, existing, report)
        gone = {username_of(pk, dn): (pk, dn) for pk, dn in deleted}
        if full:
            wanted = {a.username for a in accounts}
            gone |= {
                u: device_of_username(u)
                for u, user in existing.items()
                if broker.is_device(user) and u not in wanted
            }
        for username, (pk, dn) in gone.items():
            commands += broker.delete(username, pk, dn)
        report.deleted = len(gone)
        broker.check(await broker.run(commands))
    return report


async def _refuses_anonymous(settings: Settings) -> bool:
    """Whether a client without credentials is turned away, as it must be."""
    try:
        async with broker_endpoint(settings).with_credentials(None, None).client(None, timeout=5):
            return False
    except aiomqtt.MqttError:
        return True
