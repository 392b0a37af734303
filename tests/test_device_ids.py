"""Device workflow ids: one per device, and the legacy ones still found during an upgrade."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from sqlalchemy import update
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.batches import BatchActivities
from activities.legacy_ids import signal_device
from activities.verify import VerifyActivities
from ota.bridge.records import Signal
from ota.bridge.signals import Signaller
from ota.contracts import (
    SIGNAL_CANCEL,
    SIGNAL_REPORT,
    BatchInput,
    CancelRequest,
    ClaimRequest,
    DeviceReport,
    VerifyInput,
    batch_workflow_id,
    device_workflow_id,
    legacy_device_workflow_id,
)
from ota.db.engine import session_scope
from ota.db.models import Task
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    new_key,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)


def test_colliding_devices_get_different_ids():
    # Both were `device-a-b-c001`.
    assert legacy_device_workflow_id("a", "b-c001") == legacy_device_workflow_id("a-b", "c001")
    assert device_workflow_id("a", "b-c001") == "device/a/b-c001"
    assert device_workflow_id("a-b", "c001") == "device/a-b/c001"


async def test_colliding_devices_update_at_the_same_time(temporal_env, mqtt_url, tmp_path):
    client = temporal_env.client
    ctx = make_context(tmp_path, mqtt_url, client, batch_poll_seconds=0.5)
    a = new_key("a")
    fleets = [
        make_fleet(ctx.engine, 1, product_key=a, prefix="b-c"),
        make_fleet(ctx.engine, 1, product_key=f"{a}-b", prefix="c"),
    ]
    (pk1, (dn1,)), (pk2, (dn2,)) = fleets
    assert legacy_device_workflow_id(pk1, dn1) == legacy_device_workflow_id(pk2, dn2)
    async with (
        upgrade_listener(mqtt_url, pk1) as pushes1,
        upgrade_listener(mqtt_url, pk2) as pushes2,
        running_worker(client, ctx),
    ):
        batches = [
            await create_batch(
                ctx, BatchInput("", make_firmware(ctx.engine, pk), src_versions=["1.0.0"])
            )
            for pk, _ in fleets
        ]
        for b in batches:  # neither is `failed/busy`: both are pushed, both workflows run
            await eventually(lambda b=b: set(states_of(ctx.engine, b["id"]).values()) == {"pushed"})
        await eventually(lambda: len(pushes1) == len(pushes2) == 1)
        await FakeBridge(ctx.engine, client, pk1).updated(dn1)
        await FakeBridge(ctx.engine, client, pk2).updated(dn2)
        results = await asyncio.gather(
            *(client.get_workflow_handle(batch_workflow_id(b["id"])).result() for b in batches)
        )
    assert [r["counts"] for r in results] == [{"updated": 1}, {"updated": 1}]
    for pk, (dn,) in fleets:
        assert (await client.get_workflow_handle(device_workflow_id(pk, dn)).describe()).parent_id


# --- a device workflow started by the previous release, under `device-{pk}-{dn}` ---------------


async def legacy_workflow(client: Client, pk: str, dn: str) -> None:
    """A running workflow under the legacy id (nobody polls its queue: it stays running)."""
    await client.start_workflow(
        "LegacyDevice", id=legacy_device_workflow_id(pk, dn), task_queue=f"nobody-{uuid.uuid4()}"
    )


def start_tasks(engine, batch_id: str, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    """What a batch that started these devices' workflows leaves in the database."""
    with session_scope(engine) as session:
        session.exec(  # type: ignore[call-overload]
            update(Task)
            .where(col(Task.batch_id) == batch_id, col(Task.device_name).in_(names))
            .values(started=True, state="pushed")
        )


async def test_claim_and_verify_find_a_device_busy_under_its_legacy_id(temporal_env, tmp_path):
    client = temporal_env.client
    ctx = make_context(tmp_path, "mqtt://127.0.0.1:1", client)
    pk, names = make_fleet(ctx.engine, 4)
    acts, env = BatchActivities(ctx.engine, client), ActivityEnvironment()
    env.run(
        acts.prepare_batch, BatchInput("old", make_firmware(ctx.engine, pk), src_versions=["1.0.0"])
    )
    # The old batch updates the first three devices: two under legacy ids (one still running),
    # the third under its new id (the server tells; the claim leaves it to the child's start).
    start_tasks(ctx.engine, "old", names[:3])
    await legacy_workflow(client, pk, names[0])
    env.run(
        acts.prepare_batch,
        BatchInput("new", make_firmware(ctx.engine, pk, version="3.0.0"), src_versions=["1.0.0"]),
    )

    # A page of nothing but legacy-busy devices is followed by the next page.
    claim = await env.run(acts.claim_tasks, ClaimRequest("new", 0, 1, want_counts=True))
    assert [t.device_name for t in claim.tasks] == [names[1]]
    assert claim.busy == 1 and claim.counts == {"failed": 1, "to_be_pushed": 3}
    new = tasks_of(ctx.engine, "new")
    assert (new[names[0]].state, new[names[0]].reason) == ("failed", "busy")
    rest = await env.run(acts.claim_tasks, ClaimRequest("new", claim.tasks[-1].task_id, 10))
    assert [t.device_name for t in rest.tasks] == names[2:] and rest.busy == 0

    # A verification finds it busy too: its task fails before its workflow starts.
    await legacy_workflow(client, pk, names[3])
    start_tasks(ctx.engine, "new", names[3:])
    verify = VerifyActivities(ctx.engine, client)
    fw = make_firmware(ctx.engine, pk, version="4.0.0", state="unverified")
    prep = await env.run(verify.prepare_verify, VerifyInput("v", fw, names[2:]))
    assert [t.device_name for t in prep.tasks] == names[2:]
    states = {n: (t.state, t.reason) for n, t in tasks_of(ctx.engine, "v").items()}
    assert states == {names[2]: ("to_be_pushed", None), names[3]: ("failed", "busy")}


async def test_signals_and_cancels_reach_a_workflow_under_its_legacy_id(temporal_env):
    client = temporal_env.client
    pk, dn = new_key(), "b-c001"
    await legacy_workflow(client, pk, dn)
    stats: Counter[str] = Counter()
    report = DeviceReport("updated", version="2.0.0", batch_id="b1")
    signals = [
        Signal(
            device_workflow_id(pk, dn), SIGNAL_REPORT, report, legacy_device_workflow_id(pk, dn)
        ),
        Signal(
            device_workflow_id(pk, "gone"),
            SIGNAL_REPORT,
            report,
            legacy_device_workflow_id(pk, "gone"),
        ),
    ]
    await Signaller(client, stats).send(signals)
    assert (stats["signals"], stats["signals_legacy"], stats["signals_not_found"]) == (1, 1, 1)
    cancel = CancelRequest("all", "b1")
    assert await signal_device(client, pk, dn, SIGNAL_CANCEL, cancel)
    assert not await signal_device(client, pk, "gone", SIGNAL_CANCEL, cancel)
    history = await client.get_workflow_handle(legacy_device_workflow_id(pk, dn)).fetch_history()
    signaled = [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signaled == [SIGNAL_REPORT, SIGNAL_CANCEL]
