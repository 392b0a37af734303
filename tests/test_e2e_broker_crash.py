"""Issue 17's scenario, end to end: 300 simulated devices, a batch at 200 a minute, and Mosquitto
SIGKILLed at the moment devices report, restarted 5 s later without the sessions it had (a crashed
broker that had not saved them). Devices that finished in those seconds reported to nobody; the
bridge, told by the broker that its session is gone, asks every device in flight again, and each
answers with its version. Every device ends updated, none by a timeout."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from tests.fixtures.mqtt import KillableBroker
from tests.fixtures.stack import OtaProcesses
from tests.test_e2e import reported, start_fleet_batch, task_states, wait_for

pytestmark = pytest.mark.slow

DEVICES, RATE = 300, 200


async def test_killing_the_broker_as_devices_report_leaves_every_device_updated(
    ota_processes: OtaProcesses, forgetful_broker: KillableBroker
):
    stack, broker = ota_processes, forgetful_broker
    stack.env["OTA_MQTT_URL"] = broker.url
    stack.env["OTA_BRIDGE_RECONCILE_PER_SECOND"] = "50"
    pk = f"bkc{uuid.uuid4().hex[:8]}"
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    run = await start_fleet_batch(
        stack,
        broker.url,
        pk,
        DEVICES,
        ["--install-seconds", "2", "--processes", "2"],
        rate_per_minute=RATE,
        timeout_minutes=10,
    )
    ctx, batch_id = run.ctx, run.batch_id
    # Devices report every few seconds from here on: kill while they do.
    await wait_for(
        lambda: task_states(ctx.engine, batch_id)["updated"] >= DEVICES // 4,
        120,
        "a quarter of the fleet updated",
        interval=0.5,
    )
    broker.kill()
    killed_at = task_states(ctx.engine, batch_id)
    await asyncio.sleep(5)
    broker.start()

    states = await wait_for(
        lambda: (c := task_states(ctx.engine, batch_id))["updated"] == DEVICES and c,
        360,
        f"all {DEVICES} tasks updated after the broker's restart (at kill: {dict(killed_at)})",
        interval=2,
    )
    assert states == Counter({"updated": DEVICES})
    assert reported(ctx.engine, pk, "2.0.0") == DEVICES
    run.listening.cancel()
    assert "pushing" in stack.log("bridge") and "tasks in flight again" in stack.log("bridge")
