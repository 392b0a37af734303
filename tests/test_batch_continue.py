"""The pacer continues as new without losing a signal that came meanwhile (workflows/continuing.py).

A cancel pending when the run's starts are used up makes the continue wait: the cancel is
handled first, then the run continues (before, it claimed with nothing left of the run's starts,
found no task, and only watched the counts while half the batch was never pushed). A
`devices_online` pending then is carried to the next run.
"""

from __future__ import annotations

import asyncio
import json

from temporalio import activity
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from activities.batches import BatchActivities
from ota.contracts import (
    SIGNAL_CANCEL,
    SIGNAL_DEVICES_ONLINE,
    BatchInput,
    CancelRequest,
    ClaimRequest,
    ClaimResult,
    batch_workflow_id,
)
from ota.domain import CancelScope
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    patch_ids,
    running_worker,
    states_of,
    upgrade_listener,
)
from workflows import WORKFLOWS
from workflows.batch import CONTINUE_AFTER_CANCEL_PATCH


def signal_with_first_page(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """claim_tasks, replaced: when it first hands out tasks, a `scheduled` cancel (a static batch
    that is pacing has nothing scheduled left: it goes on) and a `devices_online` reach the batch
    before the claim returns, so both are pending when the run's starts are used up."""
    sent: list[str] = []
    claim_tasks = BatchActivities.claim_tasks

    @activity.defn(name="claim_tasks")
    # `self` unannotated: temporalio would take an annotated one for the first argument.
    async def claim_and_signal(self, req: ClaimRequest) -> ClaimResult:  # type: ignore[no-untyped-def]
        claim = await claim_tasks(self, req)
        if claim.tasks and not sent:
            handle = self.client.get_workflow_handle(batch_workflow_id(req.batch_id))
            await handle.signal(SIGNAL_CANCEL, CancelRequest(CancelScope.SCHEDULED))
            await handle.signal(SIGNAL_DEVICES_ONLINE)
            sent.append(req.batch_id)
        return claim

    monkeypatch.setattr(BatchActivities, "claim_tasks", claim_and_signal)
    return sent


def continued_with(history: WorkflowHistory) -> dict:  # type: ignore[type-arg]
    """The input a run continued as new with."""
    for event in history.events:
        if event.HasField("workflow_execution_continued_as_new_event_attributes"):
            attrs = event.workflow_execution_continued_as_new_event_attributes
            return json.loads(attrs.input.payloads[0].data)
    raise AssertionError("the run did not continue as new")


async def test_a_continue_waits_for_the_cancel_then_carries_the_turns(
    temporal_env, mqtt_url, tmp_path, monkeypatch
):
    client = temporal_env.client
    ctx = make_context(tmp_path, mqtt_url, client, batch_poll_seconds=0.5, continue_as_new_every=2)
    pk, names = make_fleet(ctx.engine, 4)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, client, pk)
    sent = signal_with_first_page(monkeypatch)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        batch = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=600)
        )
        await eventually(lambda: sent)
        await eventually(lambda: len(pushes) == 4, 20)  # every device, not the first page only
        await eventually(lambda: set(states_of(ctx.engine, batch["id"]).values()) == {"pushed"})
        for name in names:
            await bridge.updated(name)
        handle = client.get_workflow_handle(batch_workflow_id(batch["id"]))
        result = await asyncio.wait_for(handle.result(), 30)
        first_run = (await handle.describe()).raw_description.workflow_execution_info.first_run_id
        history = await client.get_workflow_handle(handle.id, run_id=first_run).fetch_history()
    assert result["counts"] == {"updated": 4}
    assert sorted(n for n, _ in pushes) == names
    carried = continued_with(history)
    assert carried["carry"]["started"] == 2 and carried["carry"]["turns_pending"] is True
    assert CONTINUE_AFTER_CANCEL_PATCH in patch_ids(history)
    # The new path is deterministic: the run replays with its marker.
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
    await replayer.replay_workflow(history)
