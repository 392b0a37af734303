"""A canceled verification ends `canceled`, as a canceled batch does: in the database (the CLI,
API and console read it there), the workflow's result and its OtaState search attribute. Runs
canceled before that ended `completed` and still replay so (the `verify-canceled-state` patch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from ota.contracts import STATE, verify_workflow_id
from ota.db.engine import MIGRATIONS, make_engine
from ota.services.batch_signals import cancel_batch
from ota.services.verify import start_verify, wait_verify
from tests.test_workflow_support import (
    FakeBridge,
    batch_row,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    patch_ids,
    running_worker,
    states_of,
)
from workflows import WORKFLOWS
from workflows.verify import CANCELED_STATE_PATCH

# Recorded by tests/histories/record_verify_canceled.py at 85ecfd6, before this change.
BEFORE = Path(__file__).resolve().parent / "histories" / "verify-canceled-completed.json"


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client)


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())


def recorded() -> WorkflowHistory:
    return WorkflowHistory.from_json("verify-canceled", BEFORE.read_text())


async def test_a_canceled_verification_ends_canceled(ctx):
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    client = await ctx.temporal()
    async with running_worker(client, ctx):
        shown = await start_verify(ctx, fw, names, timeout=30)
        await eventually(lambda: set(states_of(ctx.engine, shown["id"]).values()) == {"pushed"})
        await cancel_batch(ctx, shown["id"])
        done = await wait_verify(ctx, shown["id"])
        handle = client.get_workflow_handle(verify_workflow_id(shown["id"]))
        result = await handle.result()
        described = await handle.describe()
        history = await handle.fetch_history()
    assert (done["state"], done["counts"], done["firmware_state"]) == (
        "canceled",
        {"canceled": 2},
        "verify_failed",
    )
    assert batch_row(ctx.engine, shown["id"]).finished_at is not None
    assert result["state"] == "canceled"  # untyped handle: the result as JSON
    assert described.typed_search_attributes.get(STATE) == "canceled"
    assert CANCELED_STATE_PATCH in patch_ids(history)
    await replayer().replay_workflow(history)


async def test_a_verification_not_canceled_records_no_marker(ctx):
    """The patch is asked only on the cancel's path: other verifications' histories are as
    before."""
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        shown = await start_verify(ctx, fw, names, timeout=30)
        await eventually(lambda: set(states_of(ctx.engine, shown["id"]).values()) == {"pushed"})
        await bridge.updated(names[0])
        done = await wait_verify(ctx, shown["id"])
        history = await client.get_workflow_handle(verify_workflow_id(shown["id"])).fetch_history()
    assert (done["state"], done["firmware_state"]) == ("completed", "verified")
    assert CANCELED_STATE_PATCH not in patch_ids(history)


async def test_a_run_canceled_before_the_change_replays_as_completed():
    history = recorded()
    upserted = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    assert b"completed" in upserted[-1].indexed_fields["OtaState"].data  # the old ending
    assert CANCELED_STATE_PATCH not in patch_ids(history)
    await replayer().replay_workflow(history)


async def test_replay_fails_without_the_patch(monkeypatch):
    """The check has teeth: ending that run `canceled` is a non-determinism error."""
    monkeypatch.setattr("workflows.verify.workflow.patched", lambda patch_id: True)
    with pytest.raises(NondeterminismError):
        await replayer().replay_workflow(recorded())


def test_verifications_canceled_before_are_stored_canceled(tmp_path):
    """Migration 0010: a verification with canceled tasks that ended `completed` was canceled;
    one whose devices all finished stays `completed`."""
    url = f"sqlite:///{tmp_path / 'before.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    old = create_engine(url)
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0009")
    engine = make_engine(url, migrate=False)
    pk, names = make_fleet(engine, 2)
    fw = make_firmware(engine, pk, state="verify_failed")
    with old.begin() as conn:
        for batch, reason in (("vcanceled", "canceled"), ("vdone", None)):
            conn.execute(
                text(
                    "INSERT INTO batches (id, firmware_id, kind, target, src_versions, max_retries,"
                    " options, product_key, module, target_version, state, skipped, total,"
                    " created_at) VALUES (:id, :fw, 'verify', 'selected', '[]', 1, '{}', :pk,"
                    " 'default', '2.0.0', 'completed', 0, 1, CURRENT_TIMESTAMP)"
                ),
                {"id": batch, "fw": fw, "pk": pk},
            )
            conn.execute(
                text(
                    "INSERT INTO tasks (batch_id, device_id, product_key, device_name, module,"
                    " target_version, state, reason, attempts, started, updated_at) SELECT :b,"
                    " id, product_key, name, 'default', '2.0.0', :s, :r, 1, 1, CURRENT_TIMESTAMP"
                    " FROM devices WHERE name = :n AND product_key = :pk"
                ),
                {"b": batch, "s": reason or "updated", "r": reason, "n": names[0], "pk": pk},
            )
    old.dispose()
    engine.dispose()
    engine = make_engine(url)  # migrates to head
    assert batch_row(engine, "vcanceled").state == "canceled"
    assert batch_row(engine, "vdone").state == "completed"
    engine.dispose()
