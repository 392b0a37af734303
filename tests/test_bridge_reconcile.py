"""A broker that lost the bridge's session: tasks in flight are pushed again (reconcile.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from ota import protocol
from ota.bridge import Bridge
from ota.device.sdk import Device
from tests.fixtures.net import free_port
from tests.linkkit.seed import seed_fleet, tasks
from tests.test_bridge import bridge_settings, publisher, running, until


async def test_a_version_reported_while_the_broker_restarted_is_asked_again(
    sqlite_engine, forgetful_broker, tmp_path
):
    """The faults issue: the broker is SIGKILLed and restarted without sessions; a device that
    finished meanwhile reports its new version before the bridge has subscribed again, so the
    report is dropped. The bridge, told by the broker that its session is gone, pushes again and
    the device's answer (its version) makes the task updated."""
    broker = forgetful_broker
    fleet = seed_fleet(sqlite_engine, 1, task_state="in_upgrade")
    pk, dn = fleet.product_key, fleet.names[0]
    settings = bridge_settings(tmp_path, broker.url, bridge_reconcile_per_second=50)
    bridge = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[pk])
    device = Device(pk, dn, mqtt_url=broker.url, versions="2.0.0", session_expiry=60)
    real = bridge.endpoint
    async with running(bridge):
        await asyncio.sleep(0.5)  # a new session: a first pass, whose push reaches no device
        broker.kill()
        # Keep the bridge away until the device has reconnected and reported to nobody.
        bridge.endpoint = dataclasses.replace(real, port=free_port())
        await until(lambda: bridge.stats["reconnects"] >= 1, what="the bridge noticing")
        broker.start()
        run = asyncio.create_task(device.run())
        try:
            await asyncio.wait_for(device.connected.wait(), 20)
            await asyncio.sleep(0.5)
            assert tasks(sqlite_engine, fleet.batch_id)[dn].state == "in_upgrade"
            bridge.endpoint = real
            await until(
                lambda: tasks(sqlite_engine, fleet.batch_id)[dn].state == "updated",
                timeout=30,
                what=f"the task updated; {bridge.stats}",
            )
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert bridge.stats["reconciles"] == 2, bridge.stats
    assert bridge.stats["reconcile_pushes"] == 2, bridge.stats  # one per pass
    assert device.stats["connects"] == 1  # its report on connect was the one dropped


async def test_a_reconnect_that_kept_its_session_does_not_reconcile(
    sqlite_engine, mqtt_url, tmp_path
):
    """Session present = 1: the broker queued the reports for the bridge, nothing was lost."""
    fleet = seed_fleet(sqlite_engine, 1, task_state="in_upgrade")
    pk, dn = fleet.product_key, fleet.names[0]
    settings = bridge_settings(tmp_path, mqtt_url, bridge_reconcile_per_second=50)
    first = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[pk])
    async with publisher(mqtt_url) as watcher:
        await watcher.subscribe(protocol.upgrade_topic(pk, dn), qos=1)
        async with running(first):  # a new session: reconciles, which here pushes the one task
            await until(lambda: first.stats["reconcile_pushes"] == 1, what=f"{first.stats}")
        async with asyncio.timeout(10):
            message = await anext(aiter(watcher.messages))
        assert json.loads(message.payload)["data"]["version"] == "2.0.0"

        again = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[pk])
        async with running(again):  # the same client id: the broker kept the session
            await asyncio.sleep(1)
        assert not first.reconciler.owed
        assert again.stats["reconciles"] == 0 and again.stats["reconcile_pushes"] == 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(aiter(watcher.messages))


async def test_a_bridge_away_longer_than_its_session_expiry_reconciles(
    sqlite_engine, mqtt_url, tmp_path
):
    """The broker kept running but let the bridge's session expire while it was down: what
    devices said meanwhile is gone, and the broker says so (session present = 0)."""
    fleet = seed_fleet(sqlite_engine, 1, task_state="in_upgrade")
    pk, dn = fleet.product_key, fleet.names[0]
    settings = bridge_settings(tmp_path, mqtt_url, bridge_reconcile_per_second=50)
    first = Bridge(settings, sqlite_engine, None, session_expiry=1, products=[pk])
    async with running(first):
        await until(lambda: first.stats["reconcile_pushes"] == 1, what=f"{first.stats}")
    device = Device(pk, dn, mqtt_url=mqtt_url, versions="2.0.0", session_expiry=60)
    run = asyncio.create_task(device.run())
    try:
        await asyncio.wait_for(device.connected.wait(), 20)  # reports 2.0.0 to nobody
        await asyncio.sleep(2)  # the bridge's session has expired by now
        assert tasks(sqlite_engine, fleet.batch_id)[dn].state == "in_upgrade"
        again = Bridge(settings, sqlite_engine, None, session_expiry=1, products=[pk])
        async with running(again):
            await until(
                lambda: tasks(sqlite_engine, fleet.batch_id)[dn].state == "updated",
                timeout=30,
                what=f"the task updated; {again.stats}",
            )
        assert again.stats["reconciles"] == 1 and again.stats["reconcile_pushes"] == 1
        assert device.stats["connects"] == 1  # answered the push, not a reconnect
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_broker_restart_that_kept_the_session_still_reconciles(
    sqlite_engine, saving_broker, tmp_path
):
    """Found by the fault harness (python -m bench --faults --seed 1 --devices 40 --rate 120):
    Mosquitto killed and restarted from its saved state says the bridge's session is present,
    but it restores the session without its shared subscriptions, so a device that reconnects
    first reports its new version to nobody. The broker's uptime tells the bridge to reconcile."""
    broker = saving_broker
    fleet = seed_fleet(sqlite_engine, 1, task_state="in_upgrade")
    pk, dn = fleet.product_key, fleet.names[0]
    settings = bridge_settings(tmp_path, broker.url, bridge_reconcile_per_second=50)
    bridge = Bridge(settings, sqlite_engine, None, session_expiry=60, products=[pk])
    device = Device(pk, dn, mqtt_url=broker.url, versions="2.0.0", session_expiry=60)
    real = bridge.endpoint
    async with running(bridge):
        await until(lambda: bridge.stats["reconciles"] == 1, what="the new session's pass")
        await asyncio.sleep(2.5)  # saved, with the bridge's session and subscriptions
        broker.kill()
        bridge.endpoint = dataclasses.replace(real, port=free_port())
        await until(lambda: bridge.stats["reconnects"] >= 1, what="the bridge noticing")
        broker.start()
        run = asyncio.create_task(device.run())
        try:
            await asyncio.wait_for(device.connected.wait(), 20)
            await asyncio.sleep(0.5)
            assert tasks(sqlite_engine, fleet.batch_id)[dn].state == "in_upgrade"
            bridge.endpoint = real
            await until(
                lambda: tasks(sqlite_engine, fleet.batch_id)[dn].state == "updated",
                timeout=30,
                what=f"the task updated; {bridge.stats}",
            )
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert bridge.stats["broker_restarts"] == 1, bridge.stats
    assert bridge.stats["reconciles"] == 2, bridge.stats
    assert device.stats["connects"] == 1  # its report on connect was the one dropped
