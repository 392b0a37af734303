"""A registered device's identity: its credentials, whether it may connect, its secret, its end.

Each change is committed to the database first (the source of truth), then put on the broker at
once, which drops the device's live connection; if the broker cannot be reached the change stands
and the error says to run `ota broker sync`.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from ota.db.engine import session_scope
from ota.db.models import Device, DeviceModule, Task
from ota.domain import ACTIVE_TASK_STATES
from ota.errors import Conflict, NotFound, OtaError, Unavailable
from ota.identity.accounts import broker_endpoint
from ota.identity.control import ControlError
from ota.identity.credentials import (
    decrypt_secret,
    device_credentials,
    encrypt_secret,
    new_device_secret,
)
from ota.identity.registry import OFF, SYNCED
from ota.identity.sync import SyncReport, sync_broker
from ota.mqtt import MqttEndpoint
from ota.services.products import validate_product_key
from ota.settings import Settings

log = logging.getLogger(__name__)


def _device(session: Session, product_key: str, device_name: str) -> Device:
    validate_product_key(product_key, "product")
    device = session.exec(
        select(Device).where(Device.product_key == product_key, Device.name == device_name)
    ).first()
    if device is None:
        raise NotFound("device", f"{product_key}/{device_name}")
    return device


def credentials(
    engine: Engine, settings: Settings, product_key: str, device_name: str
) -> dict[str, Any]:
    """What the device needs to connect, as Alibaba's console shows it: host, port, client id,
    username, password, and the secret its SDK can derive them from."""
    with Session(engine) as session:
        device = _device(session, product_key, device_name)
        stored, enabled = device.secret_enc, device.enabled
    if stored is None:
        raise Conflict(
            f"device {product_key}/{device_name} has no secret yet: run `ota broker sync`"
        )
    secret = decrypt_secret(
        stored, settings.resolved_key_encryption_secret, product_key, device_name
    )
    creds = device_credentials(product_key, device_name, secret)
    endpoint = device_endpoint(settings)
    return {
        "product_key": product_key,
        "device_name": device_name,
        "device_secret": secret,
        "host": endpoint.host,
        "port": endpoint.port,
        "tls": endpoint.tls,
        **creds.to_dict(),
        "enabled": enabled,
    }


def secrets_of(
    engine: Engine, settings: Settings, product_key: str, names: list[str]
) -> dict[str, str]:
    """Device name -> DeviceSecret, for the simulator's devices (those that have one)."""
    wanted = set(names)
    key_secret = settings.resolved_key_encryption_secret
    with Session(engine) as session:
        rows = session.exec(
            select(Device.name, Device.secret_enc).where(Device.product_key == product_key)
        ).all()
    return {
        name: decrypt_secret(stored, key_secret, product_key, name)
        for name, stored in rows
        if name in wanted and stored is not None
    }


def device_endpoint(settings: Settings) -> MqttEndpoint:
    if settings.device_mqtt_url:
        return MqttEndpoint.from_url(settings.device_mqtt_url)
    return broker_endpoint(settings).with_credentials(None, None)


def set_enabled(
    engine: Engine, settings: Settings, product_key: str, device_name: str, enabled: bool
) -> dict[str, Any]:
    """Disable: the broker drops the device's connection and refuses it until enabled again."""
    with session_scope(engine) as session:
        device = _device(session, product_key, device_name)
        device.enabled = enabled
        if not enabled:
            device.online = False
        session.add(device)
    report = _publish(engine, settings, product_key, device_name)
    return {"product_key": product_key, "device_name": device_name, "enabled": enabled, **report}


def rotate_secret(
    engine: Engine, settings: Settings, product_key: str, device_name: str
) -> dict[str, Any]:
    """A new secret; the old one stops working at once (its connection is dropped)."""
    secret = new_device_secret()
    key_secret = settings.resolved_key_encryption_secret
    with session_scope(engine) as session:
        device = _device(session, product_key, device_name)
        device.secret_enc = encrypt_secret(secret, key_secret, product_key, device_name)
        session.add(device)
    _publish(engine, settings, product_key, device_name)
    return credentials(engine, settings, product_key, device_name)


def delete_device(
    engine: Engine, settings: Settings, product_key: str, device_name: str
) -> dict[str, Any]:
    """Forget a device and its finished tasks; refused while one of its tasks is active."""
    with session_scope(engine) as session:
        device = _device(session, product_key, device_name)
        active = session.exec(
            select(Task.batch_id).where(
                Task.device_id == device.id, col(Task.state).in_(ACTIVE_TASK_STATES)
            )
        ).first()
        if active is not None:
            raise Conflict(
                f"device {product_key}/{device_name} has an active task in batch {active}: "
                "cancel it first",
                field="device",
            )
        session.execute(delete(Task).where(col(Task.device_id) == device.id))
        session.execute(delete(DeviceModule).where(col(DeviceModule.device_id) == device.id))
        session.execute(delete(Device).where(col(Device.id) == device.id))
    _publish(engine, settings, product_key, device_name, deleted=True)
    return {"product_key": product_key, "device_name": device_name, "deleted": True}


def sync(engine: Engine, settings: Settings) -> SyncReport:
    """`ota broker sync`: the broker made to agree with the registry, every device."""
    return sync_broker(engine, settings)


def _publish(
    engine: Engine, settings: Settings, product_key: str, device_name: str, deleted: bool = False
) -> dict[str, Any]:
    key = (product_key, device_name)
    try:
        if deleted:
            report = sync_broker(engine, settings, devices=[], deleted=[key])
        else:
            report = sync_broker(engine, settings, devices=[key])
    except (OtaError, ControlError) as exc:
        raise Unavailable(
            f"saved, but the broker was not updated ({exc}): the device's old access may still "
            "work until `ota broker sync` succeeds"
        ) from exc
    return {
        "broker": OFF if settings.broker_auth == "none" else SYNCED,
        "changed": report.changed,
    }
