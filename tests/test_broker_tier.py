"""The broker tier (ota/broker_tier.py): two leaves bridged to a hub, with ota_auth on each.
Devices on both leaves get the platform's pushes and replies from the hub, their reports reach
the hub exactly once and no other leaf, and a device cannot speak for another on its leaf."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ota import protocol
from ota.broker_tier import (
    DOWN,
    UP,
    BrokerTier,
    bridge_lines,
    leaves_for,
)
from ota.device import simulator
from ota.device.lean_mqtt import LeanOptions, connect
from ota.device.simulator import Fleet, FleetConfig, device_name, processes_for
from ota.errors import InvalidInput
from ota.identity.accounts import (
    ServiceRole,
    device_account,
    service_endpoint,
    service_password,
)
from ota.identity.credentials import device_credentials, new_device_secret
from ota.identity.sync import sync_accounts
from ota.mqtt import MqttEndpoint
from ota.settings import Settings
from starter.cli import app
from starter.simulate import _broker_urls
from tests.fixtures.mqtt import SERVICE_SECRET
from tests.fixtures.tier import running_tier
from tests.test_bridge import until

PK = "tierpk"
DEVICES = 6  # three on each leaf (device i on leaf i % 2)


def test_a_leaf_bridges_reports_up_and_pushes_down_only():
    lines = bridge_lines("ota-leaf-0", "127.0.0.1:1883", "pw").splitlines()
    rules = {tuple(line.split()[1:]) for line in lines if line.startswith("topic ")}
    assert rules == {(t, "out", "1") for t in UP} | {(t, "in", "1") for t in DOWN}
    assert not set(UP) & set(DOWN)  # a topic both ways would loop
    assert "/sys/+/+/thing/ota/firmware/get" in UP
    assert "/sys/+/+/thing/ota/firmware/get_reply" in DOWN
    assert "cleansession false" in lines
    assert lines[0] == "persistence false"  # a leaf keeps no state (tests/test_e2e_tier_crash.py)
    assert [leaves_for(n) for n in (1, 15_000, 15_001, 100_000)] == [0, 0, 2, 7]


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerTier]:
    with running_tier(tmp_path_factory.mktemp("tier")) as tier:
        yield tier


@contextlib.asynccontextmanager
async def listening(url: str, settings: Settings, topic: str) -> AsyncIterator[list[tuple]]:
    """(topic, payload) of every message on `topic` at the broker `url`, on the bridge's
    account (each broker of the tier holds it)."""
    endpoint = service_endpoint(settings.model_copy(update={"mqtt_url": url}), ServiceRole.BRIDGE)
    seen: list[tuple] = []
    async with endpoint.client(None) as client:
        await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for m in client.messages:
                seen.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reader.cancel()


def informs_by_device(seen: list[tuple]) -> Counter[str]:
    return Counter(topic.rsplit("/", 1)[1] for topic, _ in seen)


async def test_devices_on_both_leaves_report_once_to_the_hub_and_get_its_pushes(
    tier: BrokerTier,
):
    settings = tier.settings
    names = [device_name("t-", i) for i in range(DEVICES)]
    secrets = {n: new_device_secret() for n in names}
    sync_accounts(settings, [device_account(PK, n, s) for n, s in secrets.items()])
    cfg = FleetConfig(
        PK, DEVICES, "1.0.0", prefix="t-", mqtt_url=tier.leaf_urls[0],
        mqtt_urls=tuple(tier.leaf_urls), secrets=secrets, session_expiry=10,
        install_seconds=0,
    )  # fmt: skip
    fleet = Fleet(cfg)
    informs = protocol.inform_topic(PK, "+")
    async with (
        listening(tier.hub.url, settings, informs) as at_hub,
        listening(tier.leaf_urls[0], settings, informs) as at_leaf0,
    ):
        run = asyncio.create_task(fleet.run())
        await until(lambda: len(at_hub) >= DEVICES, 20, what="every device's version at the hub")
        assert sorted(fleet.devices[i].broker for i in range(DEVICES)) == [0, 0, 0, 1, 1, 1]
        # A push for the version a device runs is answered with its version (the SDK's rule).
        async with service_endpoint(settings, ServiceRole.WORKER).client(None) as worker:
            data = {"size": 1, "version": "1.0.0", "url": "http://127.0.0.1:9/x.bin"}
            data |= {"sign": "0" * 32, "signMethod": "Md5", "md5": "0" * 32}
            for i, name in enumerate(names):
                payload = protocol.encode_upgrade(data, i)
                await worker.publish(protocol.upgrade_topic(PK, name), payload, qos=1)
        await until(lambda: len(at_hub) >= 2 * DEVICES, 20, what="every push answered")
        await asyncio.sleep(1)  # a looping or doubled report would arrive by now
        fleet.stop.set()
        summary = await run
    assert informs_by_device(at_hub) == dict.fromkeys(names, 2)  # connect + push, once each
    assert summary["pushes"] == DEVICES and summary["duplicates"] == DEVICES
    # Reports go up only: leaf 0 saw its own devices' once each, and none of leaf 1's.
    assert informs_by_device(at_leaf0) == {n: 2 for i, n in enumerate(names) if i % 2 == 0}


async def test_firmware_get_goes_up_and_its_reply_comes_down(tier: BrokerTier):
    settings = tier.settings
    name, secret = "t-get", new_device_secret()
    sync_accounts(settings, [device_account(PK, name, secret)])
    replies: list[bytes] = []
    creds = device_credentials(PK, name, secret)
    options = LeanOptions.from_endpoint(MqttEndpoint.from_url(tier.leaf_urls[1]), timeout=10)
    conn = await connect(
        options, creds.client_id, lambda t, p: replies.append(p),
        username=creds.username, password=creds.password,
    )  # fmt: skip
    try:
        await conn.subscribe([protocol.firmware_get_reply_topic(PK, name)])
        async with listening(tier.hub.url, settings, protocol.firmware_get_topic("+", "+")) as got:
            await conn.publish(
                protocol.firmware_get_topic(PK, name), protocol.encode_firmware_get("7")
            )
            await until(lambda: got, 10, what="the request at the hub")
        assert got == [(protocol.firmware_get_topic(PK, name), protocol.encode_firmware_get("7"))]
        async with service_endpoint(settings, ServiceRole.BRIDGE).client(None) as bridge:
            reply = protocol.encode_firmware_get_reply("7", None)
            await bridge.publish(protocol.firmware_get_reply_topic(PK, name), reply, qos=1)
        await until(lambda: replies, 10, what="the reply on the leaf")
        assert json.loads(replies[0]) == json.loads(reply)
    finally:
        conn.disconnect()


async def test_a_device_on_a_leaf_cannot_publish_as_another(tier: BrokerTier):
    settings = tier.settings
    me, other = "t-me", "t-other"
    secrets = {me: new_device_secret(), other: new_device_secret()}
    sync_accounts(settings, [device_account(PK, n, s) for n, s in secrets.items()])
    creds = device_credentials(PK, me, secrets[me])
    options = LeanOptions.from_endpoint(MqttEndpoint.from_url(tier.leaf_urls[0]), timeout=10)
    async with listening(tier.hub.url, settings, protocol.inform_topic(PK, "+")) as at_hub:
        conn = await connect(
            options, creds.client_id, lambda t, p: None,
            username=creds.username, password=creds.password,
        )  # fmt: skip
        forged = protocol.encode_inform("1", "6.6.6")
        with contextlib.suppress(Exception):  # the leaf may answer by closing the connection
            await asyncio.wait_for(conn.publish(protocol.inform_topic(PK, other), forged), 5)
        conn.abort()
        # Its own report still goes through, on a connection of its own: the tier works.
        conn = await connect(
            options, creds.client_id, lambda t, p: None,
            username=creds.username, password=creds.password,
        )  # fmt: skip
        await conn.publish(protocol.inform_topic(PK, me), protocol.encode_inform("2", "1.0.0"))
        await until(lambda: at_hub, 10, what="its own report")
        await asyncio.sleep(0.5)
        conn.disconnect()
    assert [t for t, _ in at_hub] == [protocol.inform_topic(PK, me)]
    # And a wrong secret is refused at the leaf, as at a single broker.
    wrong = device_credentials(PK, other, "0" * 32)
    with pytest.raises(Exception, match="refused"):
        await connect(
            options, wrong.client_id, lambda t, p: None,
            username=wrong.username, password=wrong.password,
        )  # fmt: skip


def test_the_sync_gives_every_leaf_the_same_users(tier: BrokerTier, tmp_path: Path):
    """Registration's fan-out: a device added once signs in at either leaf."""
    name, secret = "t-anywhere", new_device_secret()
    sync_accounts(tier.settings, [device_account(PK, name, secret)])
    creds = device_credentials(PK, name, secret)

    async def sign_in(url: str) -> None:
        options = LeanOptions.from_endpoint(MqttEndpoint.from_url(url), timeout=10)
        conn = await connect(
            options, creds.client_id, lambda t, p: None,
            username=creds.username, password=creds.password,
        )  # fmt: skip
        conn.disconnect()

    for url in tier.leaf_urls:
        asyncio.run(sign_in(url))


def test_broker_config_prints_a_leafs_bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTA_HOME", str(tmp_path))
    monkeypatch.setenv("OTA_MQTT_SERVICE_SECRET", SERVICE_SECRET)
    monkeypatch.setenv("OTA_BROKER_AUTH", "plugin")
    args = ["broker", "config", str(tmp_path / "leaf"), "--leaf-of", "hub.internal:1883"]
    out = CliRunner().invoke(app, [*args, "--leaf-name", "leaf-a"])
    assert out.exit_code == 0, out.output
    settings = Settings(home=tmp_path, mqtt_service_secret=SERVICE_SECRET)
    password = service_password(settings, ServiceRole.LEAF)
    assert bridge_lines("leaf-a", "hub.internal:1883", password) in out.output
    bad = CliRunner().invoke(app, [*args[:3], "--leaf-of", "hub.internal"])
    assert bad.exit_code == 2 and "leaf_of" in bad.output and "HOST:PORT" in bad.output


def test_simulator_processes_stay_under_the_open_file_limit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(simulator.resource, "getrlimit", lambda _: (1024, 20_000))
    assert [processes_for(n) for n in (10, 17_000, 18_000, 100_000)] == [1, 1, 2, 6]


def test_simulated_devices_go_to_the_leaves_unless_told_otherwise(tmp_path: Path):
    hub, leaves = "mqtt://hub:1883", "mqtt://leaf0:1883, mqtt://leaf1:1883"
    settings = Settings(home=tmp_path, mqtt_url=hub, broker_leaf_urls=leaves)
    assert _broker_urls(None, settings) == ["mqtt://leaf0:1883", "mqtt://leaf1:1883"]
    assert _broker_urls(["mqtt://x:1"], settings) == ["mqtt://x:1"]
    assert _broker_urls(None, Settings(home=tmp_path, mqtt_url=hub)) == [hub]
    with pytest.raises(InvalidInput) as bad:
        _broker_urls(["http://x:1"], settings)
    assert bad.value.field == "mqtt_url" and "mqtts://" in str(bad.value)
