"""A batch or verification started from the Temporal CLI with input the CLI and API refuse: its
workflow fails with the cause, and the batch is recorded `failed` with the reason, so its
progress query, `ota batch show`, the API and `ota batch list --state failed` agree."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from typer.testing import CliRunner

from ota.contracts import (
    BATCH_WORKFLOW,
    QUERY_PROGRESS,
    VERIFY_WORKFLOW,
    VerifyInput,
    batch_workflow_id,
    verify_workflow_id,
)
from ota.services.batches import list_batches, show_batch
from starter.cli import app
from tests.test_workflow_support import (
    batch_row,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    tasks_of,
)


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client)


async def test_a_refused_batch_is_recorded_failed_with_the_reason(ctx, tmp_path, monkeypatch):
    pk, _ = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    async with running_worker(client, ctx):
        # What `temporal workflow start --type BatchWorkflow --input '{...}'` sends: plain JSON.
        handle = await client.start_workflow(
            BATCH_WORKFLOW,
            {
                "batch_id": "cli5",
                "firmware_id": fw,
                "src_versions": ["1.0.0"],
                "rate_per_minute": 5,
            },
            id=batch_workflow_id("cli5"),
            task_queue=ctx.settings.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        progress = await handle.query(QUERY_PROGRESS)
    cause = failed.value.cause.cause.message  # the activity's ApplicationError
    assert "rate_per_minute" in cause and "between 10 and 1000" in cause
    assert progress["state"] == "failed"
    shown = show_batch(ctx.engine, "cli5")
    assert (shown["state"], shown["kind"], shown["firmware_id"]) == ("failed", "static", fw)
    assert shown["state_note"] == f"refused: {cause}"
    assert shown["finished_at"] is not None and tasks_of(ctx.engine, "cli5") == {}
    assert [b["id"] for b in list_batches(ctx.engine, state="failed")] == ["cli5"]

    monkeypatch.setenv("OTA_HOME", str(tmp_path))  # the CLI reads the same database
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["batch", "show", "cli5"])
    assert out.exit_code == 0, out.output
    assert "static failed" in out.output and f"refused: {cause}" in out.output


async def test_a_retried_prepare_of_a_refused_batch_fails_again(ctx):
    """The same id started again (the row says refused): refused again, the row as it was."""
    pk, _ = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bad = {"batch_id": "cli6", "firmware_id": fw, "src_versions": ["1.0.0"], "percent": 500}
    async with running_worker(client, ctx):
        for _ in range(2):
            handle = await client.start_workflow(
                BATCH_WORKFLOW, bad, id=batch_workflow_id("cli6"),
                task_queue=ctx.settings.task_queue, id_reuse_policy=_allow_duplicate(),
            )  # fmt: skip
            with pytest.raises(WorkflowFailureError):
                await handle.result()
        fixed = {**bad, "percent": None}
        handle = await client.start_workflow(
            BATCH_WORKFLOW, fixed, id=batch_workflow_id("cli6"),
            task_queue=ctx.settings.task_queue, id_reuse_policy=_allow_duplicate(),
        )  # fmt: skip
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert "refused: " in failed.value.cause.cause.message
    row = batch_row(ctx.engine, "cli6")
    assert row.state == "failed" and "percent" in (row.state_note or "")


async def test_a_refused_verification_is_recorded_failed(ctx):
    pk, _ = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    client = await ctx.temporal()
    async with running_worker(client, ctx):
        handle = await client.start_workflow(
            VERIFY_WORKFLOW,
            VerifyInput("v9", fw, ["no-such-device"]),
            id=verify_workflow_id("v9"),
            task_queue=ctx.settings.task_queue,
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        progress = await handle.query(QUERY_PROGRESS)
    row = batch_row(ctx.engine, "v9")
    assert (row.kind, row.state, progress["state"]) == ("verify", "failed", "failed")
    assert "no-such-device is not a device" in (row.state_note or "")


async def test_nothing_to_record_against_an_unknown_firmware(ctx):
    """No firmware, no product: the workflow's failure is all there is (still failed)."""
    client = await ctx.temporal()
    async with running_worker(client, ctx):
        handle = await client.start_workflow(
            BATCH_WORKFLOW,
            {"batch_id": "cli7", "firmware_id": 999999, "src_versions": ["1.0.0"]},
            id=batch_workflow_id("cli7"),
            task_queue=ctx.settings.task_queue,
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        assert (await handle.query(QUERY_PROGRESS))["state"] == "failed"
    assert list_batches(ctx.engine) == []


def _allow_duplicate() -> WorkflowIDReusePolicy:
    return WorkflowIDReusePolicy.ALLOW_DUPLICATE
