"""A broker of a tier (docs/deploy.md, two leaves and a hub) SIGKILLed mid-batch, at the moment
devices report, and started again 5 s later on its files.

A leaf: the platform's own connection, to the hub, never drops, so nothing tells the bridge. The
leaf's devices reconnect to it and report their version on connect, and a pushed device that
comes back on its old version is pushed again by its workflow; what they reported into the dead
leaf, and the pushes the hub delivered to it, are gone. The hub: as a single broker's crash
(tests/test_e2e_broker_crash.py), and the leaves' bridges reconnect on their own. Either way
every task ends in the state its device's version says, none by a timeout."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ota.broker_tier import Broker, BrokerTier, launch
from ota.contracts import BatchInput
from ota.devstack import answers
from ota.services.batches import create_batch
from tests.fixtures.mqtt import SERVICE_SECRET
from tests.fixtures.stack import OtaProcesses
from tests.fixtures.tier import running_tier
from tests.test_e2e import add_test_firmware, reported, start_fleet, task_states, wait_for

pytestmark = pytest.mark.slow

DEVICES, RATE = 200, 200


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[BrokerTier]:
    with running_tier(tmp_path / "tier") as tier:
        yield tier


def kill_and_restart(broker: Broker, down_seconds: float = 5) -> None:
    """SIGKILL `broker`, and start it again on its port and files."""
    assert broker.process is not None
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait()
    time.sleep(down_seconds)
    launch(broker)
    deadline = time.monotonic() + 15
    while not answers("127.0.0.1", broker.port):
        assert time.monotonic() < deadline, f"{broker.name} did not start again"
        time.sleep(0.1)


@pytest.mark.parametrize("killed", ["leaf0", "hub"])
async def test_killing_a_broker_of_the_tier_as_devices_report_leaves_every_device_updated(
    ota_processes: OtaProcesses, tier: BrokerTier, killed: str
):
    stack = ota_processes
    stack.env |= tier.env | {"OTA_MQTT_SERVICE_SECRET": SERVICE_SECRET}
    stack.env["OTA_BRIDGE_RECONCILE_PER_SECOND"] = "50"
    pk = f"tc{uuid.uuid4().hex[:8]}"
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    # Device i on leaf i % 2.
    await start_fleet(stack, pk, DEVICES, "--install-seconds", "2", "--processes", "2")
    ctx = stack.context()
    batch = await create_batch(
        ctx,
        BatchInput(
            batch_id="",
            firmware_id=add_test_firmware(stack, pk),
            src_versions=["1.0.0"],
            rate_per_minute=RATE,
            timeout_minutes=10,
        ),
    )
    batch_id = batch["id"]
    await wait_for(
        lambda: task_states(ctx.engine, batch_id)["updated"] >= DEVICES // 4,
        120,
        "a quarter of the fleet updated",
        interval=0.5,
    )
    killed_at = task_states(ctx.engine, batch_id)
    broker = next(b for b in tier.brokers if b.name == killed)
    await asyncio.to_thread(kill_and_restart, broker)

    states = await wait_for(
        lambda: (c := task_states(ctx.engine, batch_id))["updated"] == DEVICES and c,
        240,
        f"all {DEVICES} tasks updated after {killed}'s restart (at kill: {dict(killed_at)})",
        interval=2,
    )
    assert states == Counter({"updated": DEVICES})
    assert reported(ctx.engine, pk, "2.0.0") == DEVICES
