"""The whole stack end to end: dev server, Mosquitto, `ota worker`, `ota bridge`, `ota api` and a
simulated fleet, each a real process; and the fault test that kills worker and bridge mid-batch."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from ota.context import Context
from ota.contracts import BatchInput
from ota.db.models import Batch, DeviceModule, Task
from ota.services.batch_signals import cancel_batch, promote_batch, resume_batch
from ota.services.batches import create_batch
from ota.services.firmware import add_firmware
from ota.services.products import add_product
from tests.fixtures.stack import OtaProcesses

pytestmark = pytest.mark.slow

FIRMWARE = b"\x7fELF" + bytes(range(256)) * 400  # 100 KB that is not all zeros


class PushCounter:
    """Counts upgrade pushes per device by listening to the broker like the devices do."""

    def __init__(self, mqtt_url: str, product_key: str) -> None:
        self.host, self.port = mqtt_url.rsplit("//", 1)[1].split(":")
        self.product_key = product_key
        self.pushes: Counter[str] = Counter()
        self._ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client(self.host, int(self.port)) as client:
            await client.subscribe(f"/ota/device/upgrade/{self.product_key}/+", qos=1)
            self._ready.set()
            async for msg in client.messages:  # topic: /ota/device/upgrade/{pk}/{dn}
                self.pushes[str(msg.topic).rsplit("/", 1)[1]] += 1

    async def started(self) -> None:
        await asyncio.wait_for(self._ready.wait(), 10)


async def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


def task_states(engine, batch_id: str) -> Counter[str]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        rows = s.exec(
            select(Task.state, func.count()).where(Task.batch_id == batch_id).group_by(Task.state)
        ).all()
    return Counter({state: n for state, n in rows})


def reported(engine, product_key: str, version: str) -> int:  # type: ignore[no-untyped-def]
    from ota.db.models import Device

    with Session(engine) as s:
        return s.exec(
            select(func.count())
            .select_from(DeviceModule)
            .join(Device, Device.id == DeviceModule.device_id)
            .where(Device.product_key == product_key, DeviceModule.version == version)
        ).one()


async def start_fleet(stack: OtaProcesses, product_key: str, devices: int, *extra: str) -> None:
    """Register the product and `devices` simulated devices on 1.0.0, and wait for their reports."""
    ctx = stack.context()
    add_product(ctx.engine, product_key, "E2E product")
    if stack.alive("bridge"):  # devices report their version once, on connecting
        await asyncio.to_thread(stack.wait_ready, "bridge")
    stack.start(
        "sim",
        "simulate",
        "--product", product_key, "--devices", str(devices), "--version", "1.0.0",
        "--register", "--prefix", "e2e-", "--duration", "900", *extra,
    )  # fmt: skip
    await wait_for(
        lambda: reported(ctx.engine, product_key, "1.0.0") >= devices,
        90,
        "every simulated device reported 1.0.0",
    )


def add_test_firmware(stack: OtaProcesses, product_key: str) -> int:
    ctx = stack.context()
    fw = add_firmware(
        ctx.engine,
        ctx.store,
        ctx.settings,
        src=io.BytesIO(FIRMWARE),
        file_name="fw-2.0.0.bin",
        product_key=product_key,
        name="e2e_fw",
        version="2.0.0",
        need_verify=False,
    )
    assert fw.id is not None
    return fw.id


def batch_row(ctx: Context, batch_id: str) -> Batch:
    with Session(ctx.engine) as s:
        row = s.get(Batch, batch_id)
        assert row is not None
        return row


@dataclass
class FleetBatch:
    """A running batch over a simulated fleet, and the pushes counted on the broker."""

    ctx: Context
    batch_id: str
    counter: PushCounter
    listening: asyncio.Task[None]


async def start_fleet_batch(
    stack: OtaProcesses,
    mqtt_url: str,
    product_key: str,
    devices: int,
    fleet_args: Sequence[str],
    **options: Any,
) -> FleetBatch:
    """`devices` simulated devices on 1.0.0, firmware 2.0.0, a push counter listening, and a
    batch from 1.0.0 with `options` (BatchInput's fields)."""
    await start_fleet(stack, product_key, devices, *fleet_args)
    firmware_id = add_test_firmware(stack, product_key)
    counter = PushCounter(mqtt_url, product_key)
    listening = asyncio.create_task(counter.run())
    await counter.started()
    ctx = stack.context()
    batch = await create_batch(
        ctx, BatchInput(batch_id="", firmware_id=firmware_id, src_versions=["1.0.0"], **options)
    )
    return FleetBatch(ctx, batch["id"], counter, listening)


async def test_batch_updates_a_simulated_fleet_end_to_end(ota_processes: OtaProcesses, mqtt_url):
    stack = ota_processes
    pk = f"e2e{uuid.uuid4().hex[:8]}"
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    run = await start_fleet_batch(
        stack, mqtt_url, pk, 40, ["--install-seconds", "0.5"], timeout_minutes=10
    )
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter
    states = await wait_for(
        lambda: (c := task_states(ctx.engine, batch_id))["updated"] == 40 and c,
        120,
        "all 40 tasks updated",
    )
    assert states == Counter({"updated": 40})
    assert reported(ctx.engine, pk, "2.0.0") == 40
    assert set(counter.pushes.values()) == {1}, "each device pushed exactly once"
    await wait_for(
        lambda: Session(ctx.engine).get(Batch, batch_id).state == "completed", 60, "batch completed"
    )
    run.listening.cancel()


async def test_killing_worker_and_bridge_mid_batch_loses_nothing(
    ota_processes: OtaProcesses, mqtt_url
):
    """The issue's fault test: 300 devices, worker and bridge SIGKILLed mid-batch, restarted;
    every device ends updated and none was pushed more often than its retries allow."""
    stack = ota_processes
    pk = f"flt{uuid.uuid4().hex[:8]}"
    devices, max_retries = 300, 1
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    run = await start_fleet_batch(
        stack,
        mqtt_url,
        pk,
        devices,
        ["--install-seconds", "2", "--processes", "2"],
        retry_interval_minutes=0,
        max_retries=max_retries,
        timeout_minutes=30,
    )
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter
    # Kill once a good part of the fleet is under way but far from done.
    await wait_for(
        lambda: sum(counter.pushes.values()) >= devices // 3, 120, "a third of the fleet pushed"
    )
    stack.kill("worker")
    stack.kill("bridge")
    killed_at = task_states(ctx.engine, batch_id)
    assert killed_at["updated"] < devices, f"killed too late to prove anything: {killed_at}"
    await asyncio.sleep(3)  # devices keep reporting into the bridge's persistent session
    stack.start("worker")
    stack.start("bridge")

    states = await wait_for(
        lambda: (c := task_states(ctx.engine, batch_id))["updated"] == devices and c,
        300,
        f"all {devices} tasks updated after the restart (at kill: {dict(killed_at)})",
        interval=2,
    )
    assert states == Counter({"updated": devices})
    assert reported(ctx.engine, pk, "2.0.0") == devices
    assert len(counter.pushes) == devices
    assert max(counter.pushes.values()) <= 1 + max_retries, counter.pushes.most_common(5)
    with Session(ctx.engine) as s:
        attempts = s.exec(select(func.max(Task.attempts)).where(Task.batch_id == batch_id)).one()
    assert attempts <= 1 + max_retries
    run.listening.cancel()


async def test_a_batch_updates_a_fleet_on_a_broker_that_enforces_identity(
    ota_processes: OtaProcesses, secure_broker
):
    """The whole stack as deployed: worker, bridge and API on their own broker accounts, every
    simulated device on its own secret (`ota simulate --register` makes and uses them)."""
    stack = ota_processes
    stack.env.update(secure_broker.env)
    pk = f"e2e{uuid.uuid4().hex[:8]}"
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    await start_fleet(stack, pk, 20, "--install-seconds", "0.2")
    ctx = stack.context()
    batch = await create_batch(
        ctx,
        BatchInput(batch_id="", firmware_id=add_test_firmware(stack, pk), src_versions=["1.0.0"]),
    )
    await wait_for(
        lambda: task_states(ctx.engine, batch["id"])["updated"] == 20, 120, "all 20 updated"
    )
    assert reported(ctx.engine, pk, "2.0.0") == 20
    with Session(ctx.engine) as s:
        attempts = s.exec(select(Task.attempts).where(Task.batch_id == batch["id"])).all()
    assert set(attempts) == {1}
    assert "not synced" not in stack.log("sim")


async def test_a_failing_firmware_stops_itself_then_resumes(ota_processes: OtaProcesses, mqtt_url):
    """Issue 16: half the fleet fails the update; a rule of 20% after 20 devices pauses the batch
    with far fewer than all devices pushed, says why, and a resume goes on."""
    stack = ota_processes
    stack.env["OTA_BATCH_POLL_SECONDS"] = "1"  # the pacer counts (and judges) every second
    pk = f"stp{uuid.uuid4().hex[:8]}"
    devices = 100
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    run = await start_fleet_batch(
        stack,
        mqtt_url,
        pk,
        devices,
        ["--install-seconds", "0.5", "--fail-rate", "0.5"],
        rate_per_minute=60,  # 5 every 5 s: all 100 would take 100 s
        stop_at=20,
        stop_min=20,
    )
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter

    def batch() -> Batch:
        return batch_row(ctx, batch_id)

    await wait_for(lambda: batch().state == "paused", 120, "the stop rule paused the batch")
    note = batch().state_note or ""
    assert re.fullmatch(r"paused: \d+% failed after \d+ devices, threshold 20%", note), note
    pushed = sum(counter.pushes.values())
    assert pushed <= devices // 2, f"{pushed} of {devices} pushed before the stop"
    await asyncio.sleep(7)  # a burst is due every 5 s
    assert sum(counter.pushes.values()) == pushed, "pushed while paused"
    assert task_states(ctx.engine, batch_id)["to_be_pushed"] >= devices - pushed

    await resume_batch(ctx, batch_id)
    await wait_for(
        lambda: sum(counter.pushes.values()) >= pushed + 5, 30, "pushes go on after resume"
    )
    assert batch().state == "in_progress"
    await cancel_batch(ctx, batch_id, all_tasks=True)
    await wait_for(lambda: batch().state == "canceled", 60, "batch canceled")
    run.listening.cancel()


async def test_a_three_phase_batch_waits_at_each_gate_until_promote(
    ota_processes: OtaProcesses, mqtt_url
):
    """Issue 16: 20 simulated devices in phases of 10%, 50% and 100%, promoted by the operator:
    each phase's devices update (through the real bridge) and the next wait at the gate."""
    stack = ota_processes
    stack.env["OTA_BATCH_POLL_SECONDS"] = "1"
    pk = f"phs{uuid.uuid4().hex[:8]}"
    devices = 20
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    run = await start_fleet_batch(
        stack,
        mqtt_url,
        pk,
        devices,
        ["--install-seconds", "0.5"],
        phases=[10, 50, 100],
        promote="manual",
    )
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter
    for phase, (limit, next_limit) in enumerate([(2, 10), (10, 20)], start=1):
        await wait_for(
            lambda limit=limit: task_states(ctx.engine, batch_id)["updated"] == limit,
            60,
            f"phase {phase}'s {limit} devices updated",
        )
        await asyncio.sleep(3)  # a pacer deaf to its gate would push the next phase by now
        assert sum(counter.pushes.values()) == limit, f"pushed beyond phase {phase}"
        assert task_states(ctx.engine, batch_id)["to_be_pushed"] == devices - limit
        await promote_batch(ctx, batch_id)
        await wait_for(
            lambda n=next_limit: sum(counter.pushes.values()) >= n, 60, f"phase {phase + 1}"
        )
    await wait_for(
        lambda: task_states(ctx.engine, batch_id)["updated"] == devices, 60, "every device"
    )
    assert reported(ctx.engine, pk, "2.0.0") == devices
    run.listening.cancel()


async def test_a_window_batch_pushes_nothing_outside_its_window(
    ota_processes: OtaProcesses, mqtt_url
):
    """Issue 16: a batch whose daily window opens 12 hours from now pushes nothing meanwhile;
    its devices wait with reason window, the batch's note says when it opens."""
    stack = ota_processes
    pk = f"win{uuid.uuid4().hex[:8]}"
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    opens = datetime.now(UTC) + timedelta(hours=12)
    run = await start_fleet_batch(
        stack,
        mqtt_url,
        pk,
        5,
        ["--install-seconds", "0.5"],
        window=f"{opens.minute} {opens.hour} * * *",
        window_minutes=30,
    )
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter

    def batch() -> Batch:
        return batch_row(ctx, batch_id)

    await wait_for(
        lambda: (batch().state_note or "").startswith("outside the maintenance window"),
        60,
        "the batch waits for its window",
    )
    assert f"{opens:%H:%M} UTC" in (batch().state_note or "")
    await asyncio.sleep(3)
    assert sum(counter.pushes.values()) == 0
    with Session(ctx.engine) as s:
        reasons = set(s.exec(select(Task.reason).where(Task.batch_id == batch_id)))
    assert reasons == {"window"}
    await cancel_batch(ctx, batch_id, all_tasks=True)
    await wait_for(lambda: batch().state == "canceled", 60, "batch canceled")
    run.listening.cancel()
