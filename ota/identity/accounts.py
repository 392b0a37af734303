"""Who may do what on the broker: one account per device, and one per platform service.

A device may publish and subscribe on its own topics only (../shared/PROTOCOL.md, `{pk}/{dn}`);
everything else is denied by the broker's default. Services sign in with accounts of their own:
the bridge reads every device's reports and answers firmware/get (and pushes again after a
broker lost reports), the worker pushes upgrades, and the admin account (the API and the CLI)
manages the broker's users.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from ota import protocol
from ota.identity.credentials import device_credentials, fingerprint
from ota.mqtt import MqttEndpoint
from ota.settings import Settings

DEVICE_ROLE_PREFIX = "ota-device:"
DEVICE_TAG = "ota device"  # the textname of every device account we manage: ours to delete
CONTROL_TOPIC = "$CONTROL/dynamic-security/#"

SEND, RECEIVE, SUBSCRIBE = "publishClientSend", "publishClientReceive", "subscribePattern"


class ServiceRole(StrEnum):
    BRIDGE = "ota-bridge"
    WORKER = "ota-worker"
    ADMIN = "ota-admin"
    LEAF = "ota-leaf"  # a leaf broker's bridge to the hub (ota/broker_tier.py)


@dataclass(frozen=True)
class Acl:
    kind: str
    topic: str

    def to_dynsec(self) -> dict[str, object]:
        return {"acltype": self.kind, "topic": self.topic, "allow": True}


def device_acls(product_key: str, device_name: str) -> list[Acl]:
    pk, dn = product_key, device_name
    own_sys = f"/sys/{pk}/{dn}/#"  # the device's namespace on Alibaba's broker (LinkKit uses it)
    return [
        Acl(SEND, protocol.inform_topic(pk, dn)),
        Acl(SEND, protocol.progress_topic(pk, dn)),
        Acl(SEND, protocol.status_topic(pk, dn)),
        Acl(SEND, own_sys),
        Acl(SUBSCRIBE, protocol.upgrade_topic(pk, dn)),
        Acl(SUBSCRIBE, own_sys),
    ]


def service_acls(role: ServiceRole) -> list[Acl]:
    if role is ServiceRole.BRIDGE:
        filters = protocol.DEVICE_TOPIC_FILTERS.values()
        # The plugin checks a shared subscription with its `$share/{group}/` prefix.
        reports = [Acl(SUBSCRIBE, f) for f in filters]
        reports += [Acl(SUBSCRIBE, f"$share/+/{f}") for f in filters]
        # The broker's uptime: a kept session after a broker restart may still have lost
        # reports (ota/bridge/reconcile.py).
        uptime = Acl(SUBSCRIBE, "$SYS/broker/uptime")
        # After a broker lost reports, the bridge asks the devices in flight again with the
        # worker's push (ota/bridge/reconcile.py). Refused, each push closed the bridge's
        # connection, and the next connection reconciled again (tests/test_e2e_tier_crash.py).
        pushes = Acl(SEND, protocol.upgrade_topic("+", "+"))
        return [*reports, uptime, pushes, Acl(SEND, protocol.firmware_get_reply_topic("+", "+"))]
    if role is ServiceRole.WORKER:
        return [Acl(SEND, protocol.upgrade_topic("+", "+"))]
    if role is ServiceRole.LEAF:  # devices' messages up, the platform's down
        up = [Acl(SEND, f) for f in protocol.DEVICE_TO_PLATFORM]
        return [*up, *(Acl(SUBSCRIBE, f) for f in protocol.PLATFORM_TO_DEVICE)]
    return [Acl(SEND, CONTROL_TOPIC), Acl(RECEIVE, CONTROL_TOPIC), Acl(SUBSCRIBE, CONTROL_TOPIC)]


def device_role(product_key: str, device_name: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{product_key}/{device_name}"


@dataclass(frozen=True)
class Account:
    """A broker user as the database says it should be."""

    username: str
    password: str
    role: str
    acls: list[Acl]
    client_id: str | None = None  # bound: the user may connect with this client id only
    enabled: bool = True
    textname: str = ""
    secret: str | None = None  # a device's DeviceSecret (ota_auth checks signatures with it)

    @property
    def tag(self) -> str:
        """Stored as the user's description: whether the broker holds the current password."""
        return fingerprint(self.password)


def device_account(
    product_key: str, device_name: str, secret: str, enabled: bool = True
) -> Account:
    creds = device_credentials(product_key, device_name, secret)
    return Account(
        username=creds.username,
        password=creds.password,
        role=device_role(product_key, device_name),
        acls=device_acls(product_key, device_name),
        client_id=creds.client_id,
        enabled=enabled,
        textname=DEVICE_TAG,
        secret=secret,
    )


def service_password(settings: Settings, role: ServiceRole) -> str:
    """Each service's password, derived from the installation's MQTT secret, so every process of
    one installation knows it without another file to hand around."""
    key = settings.resolved_mqtt_service_secret
    return hmac.new(key, f"ota mqtt service:{role.value}".encode(), hashlib.sha256).hexdigest()


def service_account(settings: Settings, role: ServiceRole) -> Account:
    return Account(
        username=role.value,
        password=service_password(settings, role),
        role=role.value,
        acls=service_acls(role),
        textname="ota service",
    )


def broker_endpoint(settings: Settings) -> MqttEndpoint:
    """The broker as `OTA_MQTT_URL` and the TLS settings describe it, with no service identity."""
    return MqttEndpoint.from_url(
        settings.mqtt_url,
        protocol=settings.mqtt_protocol,
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
    )


def service_endpoint(settings: Settings, role: ServiceRole) -> MqttEndpoint:
    """How a service connects: credentials in `OTA_MQTT_URL` win (one account per process, as a
    production deployment gives them); else, with broker authentication on, the service's own
    derived account."""
    endpoint = broker_endpoint(settings)
    if endpoint.username or settings.broker_auth == "none":
        return endpoint
    return endpoint.with_credentials(role.value, service_password(settings, role))
