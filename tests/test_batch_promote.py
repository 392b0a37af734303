"""`promote` (issue 16, gated phases): the service's refusals, and that the signal reaches a
workflow only when it says it waits at a phase gate. A small pacer of the test's own stands in
for BatchWorkflow: it answers the `progress` query as told and counts the promotes it gets."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from typer.testing import CliRunner

from ota.contracts import QUERY_PROGRESS, SIGNAL_PROMOTE, BatchProgress, batch_workflow_id
from ota.db.engine import session_scope
from ota.db.models import Batch
from ota.errors import Conflict, NotFound
from ota.services.batch_signals import promote_batch
from starter.cli import app
from tests.test_workflow_support import make_context, make_firmware, make_fleet

PHASES = {"phases": [10, 50, 100], "promote": "manual"}


@workflow.defn(name="GatePacer")
class GatePacer:
    """Waits as its input says (its `progress` answers so) until one promote arrives."""

    def __init__(self) -> None:
        self.progress_now = BatchProgress(batch_id="", state="in_progress")
        self.promotes = 0

    @workflow.run
    async def run(self, progress: BatchProgress) -> int:
        self.progress_now = progress
        await workflow.wait_condition(lambda: self.promotes > 0)
        return self.promotes

    @workflow.query(name=QUERY_PROGRESS)
    def progress(self) -> BatchProgress:
        return self.progress_now

    @workflow.signal(name=SIGNAL_PROMOTE)
    def promote(self) -> None:
        self.promotes += 1


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client)


def add_batch(ctx, state: str = "in_progress", kind: str = "static", **options: Any) -> str:
    """A batch row as `ota batch create` leaves it (no workflow: the test starts its own)."""
    pk, _ = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    batch_id = f"b-{uuid.uuid4().hex[:8]}"
    with session_scope(ctx.engine) as session:
        session.add(
            Batch(id=batch_id, firmware_id=fw, product_key=pk, module="default",
                  target_version="2.0.0", kind=kind, state=state, options=options)
        )  # fmt: skip
    return batch_id


async def start_pacer(ctx, batch_id: str, task_queue: str, **progress: Any) -> WorkflowHandle:
    client = await ctx.temporal()
    return await client.start_workflow(
        GatePacer.run,
        BatchProgress(**{"batch_id": batch_id, "state": "in_progress", **progress}),
        id=batch_workflow_id(batch_id),
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=2),  # a failed test leaves nothing running long
    )


def pacer_worker(ctx, task_queue: str) -> Worker:
    return Worker(
        ctx._temporal,
        task_queue=task_queue,
        workflows=[GatePacer],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )


async def signals_of(handle: WorkflowHandle) -> list[str]:
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        async for e in handle.fetch_history_events()
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"state": "completed", **PHASES}, "is already completed"),
        ({"state": "canceled", **PHASES}, "is already canceled"),
        ({"kind": "verify"}, "is a verification"),
        ({}, "has no phases"),
        ({"promote_at": None}, "has no phases"),
    ],
)
async def test_refused_before_temporal_is_asked(ctx, row, message):
    batch_id = add_batch(ctx, **row)
    with pytest.raises(Conflict) as refused:
        await promote_batch(ctx, batch_id)
    assert message in refused.value.message and refused.value.field == "batch"


async def test_an_unknown_batch_is_not_found(ctx):
    for batch_id in ("nope", "not a batch id"):
        with pytest.raises(NotFound, match=f"batch {batch_id} not found"):
            await promote_batch(ctx, batch_id)


async def test_a_batch_whose_workflow_is_gone_is_not_found(ctx):
    batch_id = add_batch(ctx, **PHASES)
    with pytest.raises(NotFound, match=f"workflow batch-{batch_id} not found"):
        await promote_batch(ctx, batch_id)


async def test_a_pacer_at_its_gate_gets_the_promote(ctx):
    batch_id, queue = add_batch(ctx, **PHASES), f"tq-{uuid.uuid4()}"
    async with pacer_worker(ctx, queue):
        handle = await start_pacer(ctx, batch_id, queue, waiting="phase", phase=0)
        receipt = await promote_batch(ctx, batch_id)
        assert (receipt["batch_id"], receipt["signal"], receipt["at_gate"]) == (
            batch_id,
            "promote",
            True,
        )
        # It ran on the promote, and got exactly one.
        assert await asyncio.wait_for(handle.result(), 15) == 1
        # Once its workflow is over the batch cannot be promoted again.
        with pytest.raises(Conflict, match="is already in_progress"):
            await promote_batch(ctx, batch_id)


@pytest.mark.parametrize(
    ("progress", "said"),
    [
        ({}, "it is in_progress, pushing phase 2"),
        ({"waiting": "window"}, "it waits for its window"),
        ({"note": "paused by the operator", "state": "paused"}, "paused by the operator"),
    ],
)
async def test_a_pacer_away_from_a_gate_gets_nothing(ctx, progress, said):
    batch_id, queue = add_batch(ctx, **PHASES), f"tq-{uuid.uuid4()}"
    async with pacer_worker(ctx, queue):
        handle = await start_pacer(ctx, batch_id, queue, phase=1, **progress)
        with pytest.raises(Conflict) as refused:
            await promote_batch(ctx, batch_id)
        assert refused.value.field == "batch"
        assert refused.value.message == (f"batch {batch_id} is not waiting at a phase gate: {said}")
        assert await signals_of(handle) == []
        await handle.terminate("test done")


async def test_without_a_worker_the_promote_is_sent_unchecked(ctx):
    """No worker answers the query: the promote goes anyway (the pacer ignores it away from a
    gate) and the receipt says it was not checked; a worker that comes later acts on it."""
    batch_id, queue = add_batch(ctx, **PHASES), f"tq-{uuid.uuid4()}"
    handle = await start_pacer(ctx, batch_id, queue, waiting="phase")
    receipt = await promote_batch(ctx, batch_id)
    assert (receipt["signal"], receipt["at_gate"]) == ("promote", False)
    assert await signals_of(handle) == ["promote"]
    async with pacer_worker(ctx, queue):
        assert await asyncio.wait_for(handle.result(), 15) == 1


async def test_the_cli_promotes_and_says_why_it_will_not(ctx, temporal_env, tmp_path, monkeypatch):
    """`ota batch promote`: the receipt (--json), a line, and exit 2 naming why not."""
    monkeypatch.setenv("OTA_HOME", str(tmp_path))  # the database make_context made
    monkeypatch.setenv(
        "OTA_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host
    )
    monkeypatch.setenv("COLUMNS", "200")  # one line per message

    async def ota(*args: str):
        # In a thread: the command runs its own event loop, the worker goes on in this one.
        return await asyncio.to_thread(CliRunner().invoke, app, ["batch", *args])

    at_gate, away, queue = add_batch(ctx, **PHASES), add_batch(ctx, **PHASES), f"tq-{uuid.uuid4()}"
    async with pacer_worker(ctx, queue):
        handle = await start_pacer(ctx, at_gate, queue, waiting="phase")
        result = await ota("promote", at_gate, "--json")
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert (shown["batch_id"], shown["signal"], shown["at_gate"]) == (at_gate, "promote", True)
        assert await asyncio.wait_for(handle.result(), 15) == 1

        other = await start_pacer(ctx, away, queue, note="phase 2 of 3 (5 devices): pushing")
        result = await ota("promote", away)
        assert result.exit_code == 2
        assert f"batch {away} is not waiting at a phase gate: phase 2 of 3" in result.stderr
        await other.terminate("test done")

    unchecked = add_batch(ctx, **PHASES)
    handle = await start_pacer(ctx, unchecked, f"tq-{uuid.uuid4()}", waiting="phase")
    result = await ota("promote", unchecked)
    assert result.exit_code == 0, result.output
    assert f"promote sent to batch {unchecked}" in result.stdout
    assert "no worker answered whether it waits at a phase gate" in result.stdout
    await handle.terminate("test done")

    plain = add_batch(ctx)
    result = await ota("promote", plain)
    assert result.exit_code == 2 and f"batch {plain} has no phases" in result.stderr
