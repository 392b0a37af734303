"""Make the broker's users and ACLs agree with the device registry (the source of truth).

`sync_broker` reads the devices (all, or the few a registration change touched), works out what
the broker lacks or holds wrongly, and sends only that: a user whose password, client id and
state are already right is left alone, since the plugin drops a user's live connection on any
change to it. So a sync is idempotent, cheap when nothing changed, and rebuilds a broker that lost
its state. Full syncs also delete the device users of devices no longer registered.
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
from ota.identity import dynsec
from ota.identity.accounts import (
    DEVICE_TAG,
    Account,
    ServiceRole,
    broker_endpoint,
    device_account,
    device_role,
    service_account,
    service_endpoint,
)
from ota.identity.credentials import (
    decrypt_secret,
    device_credentials,
    encrypt_secret,
    new_device_secret,
    username_of,
)
from ota.settings import Settings

log = logging.getLogger(__name__)

DeviceKey = tuple[str, str]  # (product key, device name)

# The broker's defaults: a user may do only what its role allows.
DEFAULT_ACCESS = [
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": True},
    {"acltype": "subscribe", "allow": False},
    {"acltype": "unsubscribe", "allow": True},
]
# Errors that only say the thing is already there (roles and ACLs are the same every time).
ALREADY_THERE = ("createRole", "addRoleACL")


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
    return _run(_sync(settings, accounts, keys is None, list(deleted), report))


def sync_accounts(
    settings: Settings, accounts: list[Account], deleted: Iterable[DeviceKey] = ()
) -> SyncReport:
    """Put these device users on the broker (registration, which has the secrets at hand)."""
    if settings.broker_auth == "none":
        return SyncReport()
    report = SyncReport(devices=len(accounts))
    return _run(_sync(settings, accounts, False, list(deleted), report))


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
                session.execute(
                    update(Device).where(col(Device.id) == row.id).values(secret_enc=row.secret_enc)
                )
            report.secrets_created = len(fresh)
            log.info("made secrets for %d devices registered before device identity", len(fresh))
    accounts = []
    for row in rows:
        assert row.secret_enc is not None
        secret = decrypt_secret(row.secret_enc, key_secret, row.product_key, row.name)
        creds = device_credentials(row.product_key, row.name, secret)
        accounts.append(device_account(row.product_key, row.name, creds, row.enabled))
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
    query = select(Device.id, Device.product_key, Device.name, Device.enabled, Device.secret_enc)
    if keys is not None:
        if not keys:
            return []
        query = query.where(tuple_(col(Device.product_key), col(Device.name)).in_(keys))
    return [_Row(*r) for r in session.exec(query)]  # type: ignore[call-overload]


async def _sync(
    settings: Settings,
    accounts: list[Account],
    full: bool,
    deleted: list[DeviceKey],
    report: SyncReport,
) -> SyncReport:
    admin = service_endpoint(settings, ServiceRole.ADMIN)
    # A broker that lets anyone in enforces nothing, and never answers the plugin's topic:
    # say so at once rather than after a timeout.
    report.anonymous_refused = await _refuses_anonymous(settings)
    if not report.anonymous_refused:
        raise Unavailable(
            f"the broker at {admin.url} accepts anonymous clients, so it does not enforce device "
            "identity: configure it (`ota broker config`, docs/security.md), or set "
            "OTA_BROKER_AUTH=none to leave its users alone"
        )
    async with dynsec.Dynsec(admin, settings.broker_timeout_seconds) as broker:
        commands: list[dynsec.Command] = []
        if full:
            commands.append({"command": "setDefaultACLAccess", "acls": DEFAULT_ACCESS})
            services = [
                service_account(settings, r) for r in (ServiceRole.BRIDGE, ServiceRole.WORKER)
            ]
            accounts = services + accounts
            existing = await _list_users(broker)
        else:
            existing = await _get_users(broker, [a.username for a in accounts])
        commands += plan(accounts, existing, report)
        gone = {username_of(pk, dn): (pk, dn) for pk, dn in deleted}
        if full:
            wanted = {a.username for a in accounts}
            gone |= {
                u: _device_of(u)
                for u, user in existing.items()
                if user.get("textname") == DEVICE_TAG and u not in wanted
            }
        for username, (pk, dn) in gone.items():
            commands.append({"command": "deleteClient", "username": username})
            commands.append({"command": "deleteRole", "rolename": device_role(pk, dn)})
        report.deleted = len(gone)
        responses = await broker.run(commands)
        _check(responses)
    return report


def plan(
    accounts: list[Account], existing: dict[str, dict[str, Any]], report: SyncReport
) -> list[dynsec.Command]:
    """The commands that make the broker hold `accounts`, given the users it holds now."""
    commands: list[dynsec.Command] = []
    for a in accounts:
        user = existing.get(a.username)
        if user is None:
            commands.append(
                {
                    "command": "createRole",
                    "rolename": a.role,
                    "acls": [x.to_dynsec() for x in a.acls],
                }
            )
            create = {
                "command": "createClient",
                "username": a.username,
                "password": a.password,
                "textname": a.textname,
                "textdescription": a.tag,
                "roles": [{"rolename": a.role}],
            }
            if a.client_id:
                create["clientid"] = a.client_id
            commands.append(create)
            report.created += 1
            if not a.enabled:
                commands.append({"command": "disableClient", "username": a.username})
                report.disabled += 1
            continue
        roles = [r.get("rolename") for r in user.get("roles", [])]
        if (
            user.get("textdescription") != a.tag
            or (a.client_id and user.get("clientid") != a.client_id)
            or roles != [a.role]
        ):
            # The role itself may be missing too (a half-done earlier sync): make sure of it.
            commands.append(
                {
                    "command": "createRole",
                    "rolename": a.role,
                    "acls": [x.to_dynsec() for x in a.acls],
                }
            )
            modify = {
                "command": "modifyClient",
                "username": a.username,
                "password": a.password,
                "textdescription": a.tag,
                "roles": [{"rolename": a.role}],
            }
            if a.client_id:
                modify["clientid"] = a.client_id
            commands.append(modify)
            report.updated += 1
        elif not a.client_id:  # services: their ACLs may have grown with a release
            commands += [
                {"command": "addRoleACL", "rolename": a.role, **x.to_dynsec()} for x in a.acls
            ]
        disabled = bool(user.get("disabled"))
        if disabled and a.enabled:
            commands.append({"command": "enableClient", "username": a.username})
            report.enabled += 1
        elif not disabled and not a.enabled:
            commands.append({"command": "disableClient", "username": a.username})
            report.disabled += 1
    return commands


def _check(responses: list[dict[str, Any]]) -> None:
    for r in responses:
        error = r.get("error")
        if not error or r.get("command") in ALREADY_THERE:
            continue
        if r.get("command") in ("deleteClient", "deleteRole") and "not found" in error.lower():
            continue  # already gone
        raise dynsec.DynsecError(f"the broker refused {r.get('command')}: {error}")


async def _list_users(broker: dynsec.Dynsec) -> dict[str, dict[str, Any]]:
    [response] = await broker.run([{"command": "listClients", "verbose": True, "count": -1}])
    _check([response])
    clients = response.get("data", {}).get("clients", [])
    return {c["username"]: c for c in clients if "username" in c}


async def _get_users(broker: dynsec.Dynsec, usernames: list[str]) -> dict[str, dict[str, Any]]:
    responses = await broker.run([{"command": "getClient", "username": u} for u in usernames])
    found = {}
    for response in responses:
        client = response.get("data", {}).get("client")
        if client and "username" in client:
            found[client["username"]] = client
    return found


def _device_of(username: str) -> DeviceKey:
    name, _, product_key = username.partition("&")
    return product_key, name


async def _refuses_anonymous(settings: Settings) -> bool:
    """Whether a client without credentials is turned away, as it must be."""
    try:
        async with broker_endpoint(settings).with_credentials(None, None).client(None, timeout=5):
            return False
    except aiomqtt.MqttError:
        return True
