"""A 1,000-device batch continuing as new every 100 starts: each device once, small runs."""

from __future__ import annotations

import time

from sqlmodel import Session, func, select

from ota.contracts import BatchInput, batch_workflow_id
from ota.db.models import Task
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
)

DEVICES = 1000
EVERY = 100
# A run starts 100 devices in bursts of 50: per start about 4 events (initiated, started, and
# a share of the workflow tasks), plus a few local-activity markers and timers per burst.
RUN_EVENT_BOUND = 400  # 213-261 measured


async def test_thousand_devices_each_started_once_over_many_runs(temporal_env, mqtt_url, tmp_path):
    client = temporal_env.client
    ctx = make_context(
        tmp_path, mqtt_url, client, continue_as_new_every=EVERY, batch_poll_seconds=1.0
    )
    # Offline devices: the pacer's work is the point, not the pushes.
    pk, _ = make_fleet(ctx.engine, DEVICES, online=False)
    fw = make_firmware(ctx.engine, pk)
    query_devices = None
    async with running_worker(client, ctx):
        began = time.monotonic()
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        query_devices = f'ParentWorkflowId = "{batch_workflow_id(b["id"])}"'

        async def all_started() -> bool:
            return (await client.count_workflows(query_devices)).count >= DEVICES

        await eventually(all_started, timeout=180, every=1.0)
        paced = time.monotonic() - began
        # Exactly once: one device workflow per device, one claim per task.
        assert (await client.count_workflows(query_devices)).count == DEVICES
        with Session(ctx.engine) as session:
            started = session.exec(
                select(func.count()).where(Task.batch_id == b["id"], Task.started)
            ).one()
        assert started == DEVICES

        runs = [
            w.run_id
            async for w in client.list_workflows(f'WorkflowId = "{batch_workflow_id(b["id"])}"')
        ]
        lengths = []
        for run_id in runs:
            handle = client.get_workflow_handle(batch_workflow_id(b["id"]), run_id=run_id)
            lengths.append(len([e async for e in handle.fetch_history_events()]))
        print(f"paced {DEVICES} devices in {paced:.1f}s; {len(runs)} runs; events {lengths}")
        assert len(runs) >= DEVICES // EVERY
        assert max(lengths) <= RUN_EVENT_BOUND

        # Cancel all: one activity signals every started device workflow, page by page.
        began = time.monotonic()
        await cancel_batch(ctx, b["id"], all_tasks=True)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
        result = await handle.result()
        print(f"canceled {DEVICES} devices in {time.monotonic() - began:.1f}s")
    assert result["state"] == "canceled"
    assert sum(result["counts"].values()) == DEVICES
