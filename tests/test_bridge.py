"""The bridge against the real Mosquitto: batching, redelivery after a crash, replies, garbage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
from sqlalchemy import update
from sqlmodel import Session, select

from ota import protocol
from ota.bridge import Bridge
from ota.db.engine import make_engine
from ota.db.models import DeviceModule, Task
from ota.device.sdk import Device
from ota.mqtt import MqttEndpoint
from ota.settings import Settings
from tests.linkkit.seed import new_pk, seed_fleet, tasks, versions


class Recorder:
    """Stands in for temporalio's Client: records signals instead of sending them."""

    def __init__(self) -> None:
        self.signals: list[tuple] = []

    @property
    def reports(self) -> list[tuple]:
        """The device reports only: a device whose seeded task says pushed also gets an `online`
        when it says its old version on connect (the push was lost: its workflow asks again)."""
        return [s for s in self.signals if s[1] == "report"]

    def get_workflow_handle(self, workflow_id: str):  # type: ignore[no-untyped-def]
        recorder = self

        class Handle:
            async def signal(self, name: str, *args: object) -> None:
                recorder.signals.append((workflow_id, name, *args))

        return Handle()


def bridge_settings(tmp_path: Path, mqtt_url: str, **kw: object) -> Settings:
    """A bridge session and share group of its own: other tests' bridges share the broker."""
    tag = uuid.uuid4().hex[:8]
    values: dict = {
        "home": tmp_path,
        "mqtt_url": mqtt_url,
        "bridge_client_id": f"test-bridge-{tag}",
        "bridge_share_group": f"test-{tag}",
        "bridge_flush_seconds": 0.2,
        "url_secret": "test-secret",
        "public_url": "http://127.0.0.1:9",
        "broker_auth": "none",  # the machine's anonymous Mosquitto, unless kw says otherwise
        # A new bridge session would push every seeded in-flight task again: tests that set up
        # their own pushes turn that on only where it is the subject (test_bridge_reconcile.py).
        "bridge_reconcile_per_second": 0,
    }
    return Settings(**(values | kw))


@contextlib.asynccontextmanager
async def running(bridge: Bridge) -> AsyncIterator[Bridge]:
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.ready.wait(), 10)
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate, timeout: float = 20, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)
    return result


def publisher(mqtt_url: str) -> aiomqtt.Client:
    return MqttEndpoint.from_url(mqtt_url).client(None)


async def test_500_devices_reporting_at_once_take_a_few_transactions(engine, mqtt_url, tmp_path):
    fleet = seed_fleet(engine, 500)
    recorder = Recorder()
    bridge = Bridge(
        bridge_settings(tmp_path, mqtt_url),
        engine,
        recorder,
        session_expiry=60,
        products=[fleet.product_key],
    )
    devices = [
        Device(fleet.product_key, n, mqtt_url=mqtt_url, versions="1.0.0", session_expiry=60)
        for n in fleet.names
    ]

    async with running(bridge):
        runs = [asyncio.create_task(d.run()) for d in devices]
        try:
            await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
            # Each device said online and 1.0.0 on connect; wait until all of that is recorded.
            await until(
                lambda: bridge.stats["received"] >= 1000, what=f"connect reports {bridge.stats}"
            )
            await asyncio.sleep(0.5)
            before = bridge.stats["transactions"]
            started = time.monotonic()
            for d in devices:
                d.versions["default"] = "2.0.0"
            await asyncio.gather(*(d.report_version() for d in devices))
            await until(lambda: len(recorder.reports) >= 500, what="500 updated signals")
            elapsed = time.monotonic() - started
            burst = bridge.stats["transactions"] - before
        finally:
            for r in runs:
                r.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
    assert versions(engine, fleet.product_key) == dict.fromkeys(fleet.names, "2.0.0")
    assert {t.state for t in tasks(engine, fleet.batch_id).values()} == {"updated"}
    assert len(recorder.reports) == 500
    # Their tasks say pushed, and each said 1.0.0 on connect: a lost push, asked again once.
    assert Counter(s[1] for s in recorder.signals) == {"report": 500, "online": 500}
    print(f"\n500 devices: {burst} transactions in {elapsed:.2f}s; {dict(bridge.stats)}")
    assert burst <= 10, bridge.stats
    assert bridge.stats["unknown_device"] == 0 and bridge.stats["rejected"] == 0


async def test_reports_queued_while_the_bridge_is_away_arrive_in_one_transaction(
    sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 300, task_state=None)
    settings, pks = bridge_settings(tmp_path, mqtt_url), [fleet.product_key]
    async with running(Bridge(settings, sqlite_engine, None, session_expiry=60, products=pks)):
        pass  # creates the persistent session and its subscriptions, then leaves
    async with publisher(mqtt_url) as pub:
        for n in fleet.names:
            inform = protocol.encode_inform("1", "1.1.0")
            await pub.publish(protocol.inform_topic(fleet.product_key, n), inform, qos=1)
    bridge = Bridge(settings, sqlite_engine, None, session_expiry=60, products=pks)
    async with running(bridge):
        await until(lambda: bridge.stats["received"] >= 300, what="queued reports")
        await until(lambda: bridge.stats["flushes"] >= 1)
    assert versions(sqlite_engine, fleet.product_key) == dict.fromkeys(fleet.names, "1.1.0")
    assert bridge.stats["transactions"] <= 5, bridge.stats  # usually 1: not one per device


def test_a_message_received_but_not_flushed_is_redelivered_after_a_crash(mqtt_url, tmp_path):
    db = f"sqlite:///{tmp_path / 'ota.db'}"
    engine = make_engine(db)
    fleet = seed_fleet(engine, 1, task_state=None)
    settings = bridge_settings(tmp_path, mqtt_url, database_url=db)
    env = {
        **os.environ,
        "OTA_HOME": str(tmp_path),
        "OTA_DATABASE_URL": db,
        "OTA_MQTT_URL": mqtt_url,
        "OTA_BRIDGE_CLIENT_ID": settings.bridge_client_id,
        "OTA_BRIDGE_SHARE_GROUP": settings.bridge_share_group,
        "OTA_BRIDGE_FLUSH_SECONDS": "60",  # receives, then would wait a minute to write
        "OTA_TEMPORAL_ADDRESS": "127.0.0.1:9",
    }
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "starter", "bridge", "-v"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for_text(log_path, "bridge connected", proc)
        dn = fleet.names[0]
        topic = protocol.inform_topic(fleet.product_key, dn)
        asyncio.run(publish_once(mqtt_url, topic, protocol.encode_inform("1", "3.0.0")))
        wait_for_text(log_path, f"received {topic}", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # between receipt and flush: nothing acked
        proc.wait()
    assert versions(engine, fleet.product_key) == {dn: "1.0.0"}

    async def restart() -> Bridge:
        bridge = Bridge(settings, engine, None, session_expiry=60, products=[fleet.product_key])
        async with running(bridge):
            await until(lambda: versions(engine, fleet.product_key)[dn] == "3.0.0")
        return bridge

    assert asyncio.run(restart()).stats["received"] == 1


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the bridge's log:\n{path.read_text()}")
        time.sleep(0.05)


async def publish_once(mqtt_url: str, topic: str, payload: bytes) -> None:
    async with publisher(mqtt_url) as pub:
        await pub.publish(topic, payload, qos=1)


async def test_firmware_get_is_answered_with_a_fresh_url_or_nothing(
    sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 2)
    pending, idle = fleet.names
    with Session(sqlite_engine) as s:
        s.execute(update(Task).where(Task.device_name == idle).values(state="updated"))
        s.commit()
    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[fleet.product_key])
    pk = fleet.product_key
    async with running(bridge), publisher(mqtt_url) as client:
        await client.subscribe(f"/sys/{pk}/+/thing/ota/firmware/get_reply", qos=1)
        await client.publish(protocol.firmware_get_topic(pk, pending), b'{"id":7,"params":{}}', 1)
        await client.publish(protocol.firmware_get_topic(pk, idle), b'{"id":"8"}', 1)
        replies = {}
        async with asyncio.timeout(10):
            async for m in client.messages:
                replies[str(m.topic).split("/")[3]] = json.loads(m.payload)
                if len(replies) == 2:
                    break
    assert replies[idle] == {"id": "8", "code": 200, "data": {}, "message": "success"}
    data = replies[pending]["data"]
    assert replies[pending]["id"] == "7"
    assert (data["version"], data["size"], data["signMethod"]) == (
        "2.0.0",
        fleet.firmware.size,
        "Md5",
    )
    assert data["url"].startswith(f"http://127.0.0.1:9/download/{fleet.firmware.id}?pk={pk}")


async def test_garbage_and_strangers_are_counted_and_the_bridge_goes_on(
    sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 1, task_state=None)
    (dn,) = fleet.names
    pk, stranger = fleet.product_key, new_pk()
    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[pk, stranger])
    async with running(bridge), publisher(mqtt_url) as client:
        await client.publish(protocol.inform_topic(pk, dn), b"{garbage", qos=1)
        await client.publish(protocol.progress_topic(pk, dn), b'{"params":{"step":"x"}}', qos=1)
        await client.publish(
            protocol.inform_topic(stranger, "nobody"), b'{"params":{"version":"1"}}', 1
        )
        await client.publish(protocol.inform_topic(pk, dn), protocol.encode_inform("9", "1.2.3"), 1)
        await until(lambda: versions(sqlite_engine, pk) == {dn: "1.2.3"})
    assert bridge.stats["rejected"] == 2
    assert bridge.stats["unknown_device"] == 1


async def test_a_report_the_api_would_refuse_is_dropped_and_costs_the_others_nothing(
    engine, mqtt_url, tmp_path
):
    """Stored, `1.0\u00b2` made the console's version list fail (500), and on PostgreSQL an
    over-long module failed the flush's transaction, so the bridge retried it message by
    message: such reports are rejected when parsed, like garbage."""
    fleet = seed_fleet(engine, 2, task_state=None)
    pk, (good, bad) = fleet.product_key, fleet.names
    bridge = Bridge(
        bridge_settings(tmp_path, mqtt_url), engine, None, session_expiry=60, products=[pk]
    )
    async with running(bridge), publisher(mqtt_url) as client:
        inform, progress = protocol.inform_topic(pk, bad), protocol.progress_topic(pk, bad)
        await client.publish(inform, protocol.encode_inform("1", "1.0\u00b2"), qos=1)
        await client.publish(inform, protocol.encode_inform("2", "1.1.0", "m" * 65), qos=1)
        await client.publish(progress, protocol.encode_progress("3", 5, module="../x"), qos=1)
        await client.publish(protocol.inform_topic(pk, good), protocol.encode_inform("4", "1.1.0"))
        await until(lambda: versions(engine, pk)[good] == "1.1.0" and bridge.stats["flushes"])
    assert versions(engine, pk) == {good: "1.1.0", bad: "1.0.0"}
    with Session(engine) as s:
        bad_id = fleet.device_ids[bad]
        modules = s.exec(select(DeviceModule.module).where(DeviceModule.device_id == bad_id))
        assert list(modules) == ["default"]
    assert bridge.stats["rejected"] == 3, bridge.stats
    assert bridge.stats["errors"] == 0, bridge.stats  # no batch was retried one by one


async def test_mqtt_311_without_shared_subscriptions(sqlite_engine, mqtt_url, tmp_path):
    """The embedded amqtt broker speaks 3.1.1 only: one bridge, plain filters, retained skipped."""
    fleet = seed_fleet(sqlite_engine, 1, task_state=None)
    pk, dn = fleet.product_key, fleet.names[0]
    settings = bridge_settings(tmp_path, mqtt_url, mqtt_protocol="3.1.1")
    async with publisher(mqtt_url) as client:  # a retained report: old news to a new bridge
        await client.publish(protocol.status_topic(pk, dn), b"online", qos=1, retain=True)
    bridge = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[pk])
    device = Device(pk, dn, mqtt_url=mqtt_url, versions="3.1.1", mqtt_protocol="3.1.1")
    try:
        async with running(bridge):
            task = asyncio.create_task(device.run())
            await until(lambda: versions(sqlite_engine, pk) == {dn: "3.1.1"})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        async with publisher(mqtt_url) as client:  # leave no retained message behind
            await client.publish(protocol.status_topic(pk, dn), b"", qos=1, retain=True)
    assert bridge.stats["retained_ignored"] >= 1


async def test_a_huge_publish_never_reaches_the_bridge_and_costs_the_others_nothing(
    engine, mqtt_url, tmp_path
):
    """The bridge asks the broker (MQTT v5 Maximum Packet Size) for device-sized messages only:
    a 2 MB publish on a device topic is dropped by the broker instead of held in the bridge."""
    fleet = seed_fleet(engine, 1, task_state=None)
    dn = fleet.names[0]
    bridge = Bridge(
        bridge_settings(tmp_path, mqtt_url), engine, Recorder(), products=[fleet.product_key]
    )
    async with running(bridge), publisher(mqtt_url) as client:
        huge = b'{"id":"1","params":{"version":"' + b"9" * 2_000_000 + b'"}}'
        await client.publish(protocol.inform_topic(fleet.product_key, dn), huge, qos=1)
        good = protocol.encode_inform("2", "1.5.0")
        await client.publish(protocol.inform_topic(fleet.product_key, dn), good, qos=1)
        await until(lambda: versions(engine, fleet.product_key) == {dn: "1.5.0"})
    assert bridge.stats["received"] == 1  # only the small one was delivered


async def test_the_bridge_logs_its_broker_without_the_password(engine, mqtt_url, tmp_path, caplog):
    secret_url = mqtt_url.replace("mqtt://", "mqtt://someone:hunter2-secret@")
    bridge = Bridge(bridge_settings(tmp_path, secret_url), engine, Recorder(), products=["none"])
    with caplog.at_level(logging.DEBUG):
        async with running(bridge):
            pass
    assert "bridge connected to mqtt://127.0.0.1" in caplog.text
    assert "hunter2-secret" not in caplog.text
