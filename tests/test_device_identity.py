"""Device identity on a Mosquitto that enforces it: every device authenticates with its own
secret and speaks only for itself; disable, rotate and delete take effect on live connections.
Each test runs against both mechanisms (`secure_broker`: ota_auth, and dynamic-security)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt
import pytest
from sqlalchemy import update

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.db.engine import session_scope
from ota.db.models import Device as DeviceRow
from ota.device.sdk import Device
from ota.errors import Conflict, Unavailable
from ota.identity import accounts
from ota.identity.accounts import SEND, Acl, ServiceRole, service_endpoint
from ota.identity.control import Command
from ota.identity.credentials import device_credentials
from ota.identity.sync import broker_users, sync_broker
from ota.mqtt import MqttEndpoint
from ota.services import device_identity, devices
from ota.services.products import add_product
from ota.settings import Settings
from tests.fixtures.mqtt import SecureBroker
from tests.test_bridge import Recorder, bridge_settings, running, until
from tests.test_device_sdk import online
from tests.test_workflow_support import make_task, new_key


@pytest.fixture
def ctx(tmp_path: Path, secure_broker: SecureBroker) -> Context:
    return Context(
        Settings(
            home=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ota.db'}",
            **secure_broker.settings(),  # type: ignore[arg-type]
        )
    )


def register(ctx: Context, count: int = 2, version: str = "1.0.0") -> tuple[str, dict[str, str]]:
    """A product and `count` devices registered through the service: name -> secret."""
    pk = new_key()
    add_product(ctx.engine, pk, "identity test")
    secrets = {}
    for i in range(count):
        view = devices.add_device(ctx.engine, ctx.settings, pk, f"dev{i:03d}", version)
        assert view.broker == "synced" and view.secret
        secrets[view.name] = view.secret
    return pk, secrets


async def connects(endpoint: MqttEndpoint, client_id: str | None) -> bool:
    try:
        async with endpoint.client(client_id, timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


def device_endpoint(url: str, pk: str, dn: str, secret: str) -> tuple[MqttEndpoint, str]:
    creds = device_credentials(pk, dn, secret)
    endpoint = MqttEndpoint.from_url(url).with_credentials(creds.username, creds.password)
    return endpoint, creds.client_id


async def test_anonymous_and_wrong_secret_are_refused_own_secret_connects(ctx, secure_broker):
    pk, secrets = register(ctx, 1)
    [(dn, secret)] = secrets.items()
    plain = MqttEndpoint.from_url(secure_broker.url)
    assert not await connects(plain, "anonymous-probe")
    right, client_id = device_endpoint(secure_broker.url, pk, dn, secret)
    wrong, _ = device_endpoint(secure_broker.url, pk, dn, "0" * 32)
    assert not await connects(wrong, client_id)
    assert await connects(right, client_id)
    # The user is bound to the device's client id: its password alone cannot take another.
    assert not await connects(right, "ota-bridge")
    assert not await connects(right, f"{pk}.dev999|securemode=2|")


async def test_a_device_speaks_only_for_itself(ctx, secure_broker, tmp_path):
    """A publishes B's new version and a failure for B: the broker drops both, so B's recorded
    version and task are untouched; A cannot subscribe to B's pushes nor to everyone's."""
    pk, secrets = register(ctx, 2)
    (a, a_secret), (b, _) = secrets.items()
    extra = {k: v for k, v in secure_broker.settings().items() if k != "mqtt_url"}
    settings = bridge_settings(tmp_path, secure_broker.url, **extra)
    bridge = Bridge(settings, ctx.engine, Recorder(), session_expiry=60, products=[pk])
    endpoint, client_id = device_endpoint(secure_broker.url, pk, a, a_secret)
    forgeries = [
        (protocol.inform_topic(pk, b), protocol.encode_inform("1", "9.9.9")),
        (protocol.progress_topic(pk, b), protocol.encode_progress("2", -1)),
    ]
    async with running(bridge):
        async with endpoint.client(client_id) as attacker:
            for topic in (protocol.upgrade_topic(pk, b), "/ota/device/upgrade/#", "#"):
                [granted] = await attacker.subscribe(topic, qos=1)
                assert granted.is_failure, topic
        for topic, payload in forgeries:
            # Mosquitto drops the message, and with it the connection of who sent it.
            with contextlib.suppress(aiomqtt.MqttError):
                async with endpoint.client(client_id) as attacker:
                    await attacker.publish(topic, payload, 1)
                    await attacker.publish(topic, payload, 1)
        # Then A's own report, which must get through: once it is recorded, B's would be too.
        async with endpoint.client(client_id) as device:
            await device.publish(
                protocol.inform_topic(pk, a), protocol.encode_inform("3", "1.1.0"), 1
            )
        await until(lambda: _versions(ctx, pk).get(a) == "1.1.0", what="A's own report")
        await asyncio.sleep(0.5)
    assert _versions(ctx, pk) == {a: "1.1.0", b: "1.0.0"}
    assert bridge.stats["received"] == 1  # the broker never passed A's forgeries on


def _versions(ctx: Context, pk: str) -> dict[str, str]:
    return {v.name: v.versions.get("default", "") for v in devices.list_devices(ctx.engine, pk)}


async def received_pushes(
    secure_broker: SecureBroker, pk: str, secrets: dict[str, str], pusher: ServiceRole, to: str
) -> dict[str, list[str]]:
    """What each device of `secrets` receives when `pusher`'s account pushes to device `to`
    (a refused push closes the pusher's connection: nothing arrives)."""
    received: dict[str, list[str]] = {dn: [] for dn in secrets}
    service = service_endpoint(Settings(**secure_broker.settings()), pusher)  # type: ignore[arg-type]
    subscribers = []
    async with contextlib.AsyncExitStack() as stack:
        for dn, secret in secrets.items():
            endpoint, client_id = device_endpoint(secure_broker.url, pk, dn, secret)
            client = await stack.enter_async_context(endpoint.client(client_id))
            await client.subscribe(protocol.upgrade_topic(pk, dn), qos=1)
            subscribers.append((dn, client))
        with contextlib.suppress(aiomqtt.MqttError):
            async with service.client(f"test-{pusher.value}") as push:
                await push.publish(protocol.upgrade_topic(pk, to), b'{"for": "b"}', qos=1)

        async def drain(dn: str, client: aiomqtt.Client) -> None:
            async for message in client.messages:
                received[dn].append(message.topic.value)

        drains = [asyncio.create_task(drain(dn, c)) for dn, c in subscribers]
        await asyncio.sleep(1.0)
        for t in drains:
            t.cancel()
    return received


# The worker pushes; the bridge pushes again after a broker lost reports (ota/bridge/reconcile.py).
@pytest.mark.parametrize("pusher", [ServiceRole.WORKER, ServiceRole.BRIDGE])
async def test_a_device_gets_its_own_push_and_no_one_elses(ctx, secure_broker, pusher):
    pk, secrets = register(ctx, 2)
    a, b = secrets
    received = await received_pushes(secure_broker, pk, secrets, pusher, to=b)
    assert received == {a: [], b: [protocol.upgrade_topic(pk, b)]}


async def test_a_full_sync_gives_an_existing_service_account_this_releases_rules(
    ctx, secure_broker, monkeypatch
):
    """An installation from before the bridge could push: the broker holds its account without
    the rule, and the next full sync (`ota broker sync`) gives it."""
    pk, secrets = register(ctx, 2)
    a, b = secrets
    current, push = accounts.service_acls, Acl(SEND, protocol.upgrade_topic("+", "+"))
    monkeypatch.setattr(
        accounts,
        "service_acls",
        lambda role: [x for x in current(role) if role is not ServiceRole.BRIDGE or x != push],
    )
    await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)
    if secure_broker.broker_auth == "dynsec":  # a sync adds a service role's rules, never drops
        async with broker_users(ctx.settings) as broker:
            drop = {"command": "removeRoleACL", "rolename": ServiceRole.BRIDGE.value}
            broker.check(await broker.run([drop | {"acltype": SEND, "topic": push.topic}]))
    refused = await received_pushes(secure_broker, pk, secrets, ServiceRole.BRIDGE, to=b)
    assert refused == {a: [], b: []}
    monkeypatch.undo()
    await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)
    received = await received_pushes(secure_broker, pk, secrets, ServiceRole.BRIDGE, to=b)
    assert received == {a: [], b: [protocol.upgrade_topic(pk, b)]}


async def test_disable_drops_a_live_device_and_enable_lets_it_back(ctx, secure_broker):
    pk, secrets = register(ctx, 1)
    [(dn, secret)] = secrets.items()
    device = Device(pk, dn, mqtt_url=secure_broker.url, device_secret=secret, session_expiry=60)
    async with online(device):
        assert device.stats["connects"] == 1
        await asyncio.to_thread(
            device_identity.set_enabled, ctx.engine, ctx.settings, pk, dn, False
        )
        await until(lambda: device.stats["disconnects"] >= 1, timeout=5, what="dropped")
        await asyncio.sleep(2.5)  # it retries with backoff; the broker keeps refusing it
        assert not device.connected.is_set() and device.stats["connects"] == 1
        assert [v.enabled for v in devices.list_devices(ctx.engine, pk)] == [False]
        await asyncio.to_thread(device_identity.set_enabled, ctx.engine, ctx.settings, pk, dn, True)
        await until(lambda: device.stats["connects"] == 2, timeout=10, what="reconnected")


async def test_rotating_the_secret_drops_the_old_one_at_once(ctx, secure_broker):
    pk, secrets = register(ctx, 1)
    [(dn, old)] = secrets.items()
    device = Device(pk, dn, mqtt_url=secure_broker.url, device_secret=old, session_expiry=60)
    async with online(device):
        new = await asyncio.to_thread(
            device_identity.rotate_secret, ctx.engine, ctx.settings, pk, dn
        )
        await until(lambda: device.stats["disconnects"] >= 1, timeout=5, what="dropped")
    assert new["device_secret"] != old
    endpoint, client_id = device_endpoint(secure_broker.url, pk, dn, old)
    assert not await connects(endpoint, client_id)
    fresh = MqttEndpoint.from_url(secure_broker.url).with_credentials(
        new["username"], new["password"]
    )
    assert await connects(fresh, new["client_id"])
    assert device_identity.credentials(ctx.engine, ctx.settings, pk, dn) == new


async def test_delete_drops_the_device_and_is_refused_while_a_task_is_active(ctx, secure_broker):
    pk, secrets = register(ctx, 1)
    [(dn, secret)] = secrets.items()
    endpoint, client_id = device_endpoint(secure_broker.url, pk, dn, secret)
    await asyncio.to_thread(device_identity.delete_device, ctx.engine, ctx.settings, pk, dn)
    assert not await connects(endpoint, client_id)
    assert devices.list_devices(ctx.engine, pk) == []
    with pytest.raises(Exception, match="not found"):
        device_identity.credentials(ctx.engine, ctx.settings, pk, dn)
    # And the name can be registered anew, with a new secret.
    view = devices.add_device(ctx.engine, ctx.settings, pk, dn)
    assert view.secret != secret


def test_delete_refuses_a_device_with_an_active_task(ctx):
    pk, secrets = register(ctx, 1)
    [dn] = secrets
    make_task(ctx.engine, pk, dn)
    with pytest.raises(Conflict, match="active task"):
        device_identity.delete_device(ctx.engine, ctx.settings, pk, dn)
    assert [v.name for v in devices.list_devices(ctx.engine, pk)] == [dn]


async def test_sync_is_idempotent_and_rebuilds_what_the_broker_lost(ctx, secure_broker):
    pk, secrets = register(ctx, 3)
    names = list(secrets)
    # A device registered before device identity: no secret, no broker user.
    with session_scope(ctx.engine) as session:
        session.execute(update(DeviceRow).where(DeviceRow.name == names[2]).values(secret_enc=None))
    first = await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)
    assert first.secrets_created == 1 and first.anonymous_refused is True
    again = await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)
    assert again.changed == 0 and again.secrets_created == 0

    # The broker loses this product's users (as a broker restored from an old backup would),
    # and holds a user of a device the registry no longer has.
    ghost = f"ghost&{pk}"
    async with broker_users(ctx.settings) as broker:
        commands: list[Command] = []
        for dn in names:
            commands += broker.delete(f"{dn}&{pk}", pk, dn)
        commands += _ghost(secure_broker.broker_auth, ghost)
        broker.check(await broker.run(commands))
    lost = names[0]
    endpoint, client_id = device_endpoint(secure_broker.url, pk, lost, secrets[lost])
    assert not await connects(endpoint, client_id)
    rebuilt = await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)
    assert (rebuilt.created, rebuilt.deleted) == (3, 1)
    assert await connects(endpoint, client_id)
    async with broker_users(ctx.settings) as broker:
        assert await broker.existing([ghost]) == {}
    creds = device_identity.credentials(ctx.engine, ctx.settings, pk, names[2])
    fresh = MqttEndpoint.from_url(secure_broker.url).with_credentials(
        creds["username"], creds["password"]
    )
    assert await connects(fresh, creds["client_id"])


def _ghost(broker_auth: str, username: str) -> list[Command]:
    """A device user for a device the registry does not have."""
    if broker_auth == "plugin":
        return [{"command": "setDevice", "username": username, "secret": "x" * 32}]
    return [
        {"command": "createClient", "username": username, "password": "x", "textname": "ota device"}
    ]


def test_a_broker_that_lets_anyone_in_is_named_at_once_and_the_registry_still_saves(
    tmp_path, mqtt_url
):
    """The machine's Mosquitto allows anonymous clients: registration saves the device and says
    the broker does not enforce identity (no 30 s wait for a plugin that is not there); a disable
    saves and raises, since the device's old access may still work."""
    settings = Settings(
        home=tmp_path, broker_auth="dynsec", mqtt_url=mqtt_url, mqtt_service_secret="s"
    )
    ctx = Context(settings)
    pk = new_key()
    add_product(ctx.engine, pk, "anonymous broker")
    started = time.monotonic()
    view = devices.add_device(ctx.engine, settings, pk, "dev0001")
    assert time.monotonic() - started < 5
    assert view.secret and "accepts anonymous clients" in (view.broker or "")
    with pytest.raises(Unavailable, match="saved, but the broker was not updated"):
        device_identity.set_enabled(ctx.engine, settings, pk, "dev0001", False)
    assert [v.enabled for v in devices.list_devices(ctx.engine, pk)] == [False]
