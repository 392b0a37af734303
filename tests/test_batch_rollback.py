"""The rollback policy (issue 16, item 8): a batch whose stop rule trips pushes its rollback
firmware to the devices that failed, in one batch of their own, against the real Temporal dev
server and Mosquitto. The test plays the bridge (tests/test_workflow_support)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.workflow import NondeterminismError

import workflows.batch_safety
from activities.rollback import RollbackActivities
from activities.targets import insert_tasks
from ota.context import Context
from ota.contracts import (
    BatchInput,
    BatchProgress,
    RollbackRequest,
    RollbackResult,
    batch_workflow_id,
    rollback_batch_id,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, Task
from ota.errors import InvalidInput
from ota.protocol import EXT_DOWNGRADE
from ota.services.batch_preview import preview_batch
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch, show_batch
from ota.services.rollback import start_rollback
from ota.services.targets import select_targets
from starter.batches import _print_batch
from tests.test_api import login
from tests.test_api_support import api_client, api_settings
from tests.test_batch_safety import RATE, REPLAYER, fail_first_burst, run_histories
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
    upgrade_listener,
)
from worker import build_worker
from workflows import WORKFLOWS
from workflows.rollback import ROLLBACK_PATCH

GOOD = "1.0.0"  # the fleet's version before the bad batch
ROLLBACK = "0.9.0"  # a known-good older image: the rollback is a downgrade


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)


async def stopping_batch(ctx: Context, pk: str, action: str) -> tuple[dict, int]:
    """40 devices at 60 a minute, a rule of 50% after 4 devices (tests/test_batch_safety.py's),
    and a rollback firmware."""
    rollback_fw = make_firmware(ctx.engine, pk, version=ROLLBACK)
    inp = BatchInput(
        "",
        make_firmware(ctx.engine, pk),
        src_versions=[GOOD],
        rate_per_minute=RATE,
        timeout_minutes=30,
        stop_at=50,
        stop_min=4,
        stop_action=action,
        rollback_firmware_id=rollback_fw,
    )
    return await create_batch(ctx, inp), rollback_fw


def rollback_of(ctx: Context, batch_id: str) -> str | None:
    return batch_row(ctx.engine, batch_id).options.get("rollback_batch_id")


def rollback_pushes(pushes: list[tuple[str, dict]]) -> list[str]:
    return sorted(n for n, p in pushes if p["data"]["version"] == ROLLBACK)


async def executions(client: Client, batch_id: str) -> int:
    """Runs of the batch's workflow id that the server's visibility lists (it lags a little)."""
    query = f'WorkflowId = "{batch_workflow_id(batch_id)}"'

    async def listed() -> int:
        return len([w async for w in client.list_workflows(query)])

    await eventually(listed, timeout=10)
    await asyncio.sleep(1)  # a second run, had there been one, would be listed by now
    return await listed()


async def test_a_canceled_batch_rolls_its_failed_devices_back_once(ctx, mqtt_url, capsys):
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 40, version=GOOD)
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b, rollback_fw = await stopping_batch(ctx, pk, "cancel")
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        first_run = (await handle.describe()).run_id
        bridge = FakeBridge(ctx.engine, client, pk)
        first = await fail_first_burst(bridge, pushes)
        assert (await handle.result()).state == "canceled"
        rb = rollback_batch_id(b["id"])
        failed = sorted(first[:3])
        await eventually(lambda: rollback_pushes(pushes) == failed, timeout=20)
        # The rollback says it is intended: the devices' SDK would refuse an older image.
        for name, payload in pushes:
            if payload["data"]["version"] == ROLLBACK:
                assert payload["data"]["extData"][EXT_DOWNGRADE] is True, name
        shown = show_batch(ctx.engine, b["id"])
        assert shown["rollback_batch_id"] == rb
        rolled = show_batch(ctx.engine, rb)
        assert (rolled["kind"], rolled["target"], rolled["firmware_id"]) == (
            "static",
            "selected",
            rollback_fw,
        )
        assert (rolled["rollback_of"], rolled["rate_per_minute"]) == (b["id"], RATE)
        assert (rolled["timeout_minutes"], rolled["stop_at"]) == (30, None)
        assert sorted(states_of(ctx.engine, rb)) == failed  # exactly the failed devices
        for name in failed:
            await bridge.updated(name)
        rb_handle = client.get_workflow_handle(batch_workflow_id(rb), result_type=BatchProgress)
        assert (await rb_handle.result()).state == "completed"
    assert await executions(client, rb) == 1
    assert len(rollback_pushes(pushes)) == 3  # once each
    runs = await run_histories(client, handle.id, first_run)
    tripped = [history for history in runs if ROLLBACK_PATCH in patch_ids(history)]
    assert len(tripped) == 1
    for history in runs:
        await REPLAYER.replay_workflow(history)

    async def no_policy(inp):  # type: ignore[no-untyped-def]
        return None  # a pacer that starts no rollback does not replay the run that did

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workflows.batch_safety, "roll_back", no_policy)
        with pytest.raises(NondeterminismError):
            await REPLAYER.replay_workflow(tripped[0])
    await shows_the_link(ctx, b["id"], rb, capsys)


async def shows_the_link(ctx: Context, stopped: str, rb: str, capsys) -> None:  # type: ignore[no-untyped-def]
    """`ota batch show`, the API and the console's batch page link the two batches."""
    _print_batch(show_batch(ctx.engine, stopped))
    assert f"failed devices rolled back by batch {rb} (ota batch show {rb})" in (
        capsys.readouterr().out
    )
    settings = api_settings(ctx.settings.home, ctx.settings.database_url)
    async with api_client(settings) as api:
        shown = (await api.get(f"/api/v1/batches/{stopped}")).json()
        assert (shown["rollback_batch_id"], shown["rollback_firmware_id"]) == (
            rb,
            show_batch(ctx.engine, rb)["firmware_id"],
        )
        assert (await api.get(f"/api/v1/batches/{rb}")).json()["rollback_of"] == stopped
    async with api_client(settings, auth=False) as browser:
        await login(browser)
        page = (await browser.get(f"/batches/{stopped}")).text
        assert f'<a href="/batches/{rb}">{rb}</a>' in page
        page = (await browser.get(f"/batches/{rb}")).text
        assert f'<a href="/batches/{stopped}">{stopped}</a>' in page


@asynccontextmanager
async def crashing_worker(
    client: Client, ctx: Context, created: asyncio.Event
) -> AsyncIterator[None]:
    """The worker's every activity, but its rollback dies once it has made the rollback batch:
    a worker that crashed before it could report the activity done (Temporal retries it)."""
    real = RollbackActivities(ctx)

    @activity.defn(name="start_rollback")
    async def start_rollback_then_die(req: RollbackRequest) -> RollbackResult:
        await real.start_rollback(req)
        created.set()
        raise RuntimeError("the worker died before it reported the rollback")

    base = build_worker(client, ctx, task_queue=f"never-run-{uuid.uuid4()}")  # its activities
    kept = [
        fn
        for fn in base.config()["activities"]
        if activity._Definition.must_from_callable(fn).name != "start_rollback"  # type: ignore[arg-type]
    ]
    with ThreadPoolExecutor(8) as executor:
        async with Worker(
            client,
            task_queue=ctx.settings.task_queue,
            workflows=WORKFLOWS,
            activities=[*kept, start_rollback_then_die],
            activity_executor=executor,
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            yield
    await base.publisher.close()


async def test_a_paused_batch_rolls_back_once_across_a_worker_crash(ctx, mqtt_url):
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 40, version=GOOD)
    created = asyncio.Event()
    async with upgrade_listener(mqtt_url, pk) as pushes:
        async with crashing_worker(client, ctx, created):
            b, _ = await stopping_batch(ctx, pk, "pause")
            handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
            first_run = (await handle.describe()).run_id
            bridge = FakeBridge(ctx.engine, client, pk)
            first = await fail_first_burst(bridge, pushes)
            await asyncio.wait_for(created.wait(), timeout=20)
        # The rollback batch exists, its activity is not done: a new worker retries it.
        rb = rollback_batch_id(b["id"])
        async with running_worker(client, ctx):
            await eventually(lambda: rollback_of(ctx, b["id"]) == rb, timeout=20)
            await eventually(lambda: rollback_pushes(pushes) == sorted(first[:3]), timeout=20)
            assert batch_row(ctx.engine, b["id"]).state == "paused"
            for batch_id in (rb, b["id"]):
                await cancel_batch(ctx, batch_id, all_tasks=True)
                await client.get_workflow_handle(batch_workflow_id(batch_id)).result()
    assert await executions(client, rb) == 1
    assert len(rollback_pushes(pushes)) == 3
    # One rollback asked (the pacer's replays did not ask again), done on a retry.
    runs = await run_histories(client, batch_workflow_id(b["id"]), first_run)
    asked = [
        (h, e)
        for h in runs
        for e in h.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "start_rollback"
    ]
    assert len(asked) == 1
    (history, scheduled) = asked[0]
    (started,) = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id == scheduled.event_id
    ]
    assert started.attempt >= 2
    for history in runs:
        await REPLAYER.replay_workflow(history)
    with Session(ctx.engine) as session:
        like = select(func.count()).where(Batch.id.startswith(b["id"]))  # type: ignore[union-attr]
        assert session.exec(like).one() == 2  # the batch and its one rollback


async def test_a_rollback_registered_without_its_workflow_is_made_again(ctx):
    """An attempt that died between registering the rollback batch and starting its workflow
    left a row without a workflow: the retry replaces it (no batch without a workflow). No
    worker here: the rollback batch's workflow is started, and waits."""
    pk, names = make_fleet(ctx.engine, 4, version=GOOD)
    fw, rollback_fw = make_firmware(ctx.engine, pk), make_firmware(ctx.engine, pk, ROLLBACK)
    stopped = f"b-{uuid.uuid4().hex[:8]}"
    rb = rollback_batch_id(stopped)
    with session_scope(ctx.engine) as session:
        batch = Batch(id=stopped, firmware_id=fw, product_key=pk, module="default",
                      target_version="2.0.0", rate_per_minute=RATE, state="paused")  # fmt: skip
        session.add(batch)
        session.flush()
        batch.total = insert_tasks(session, batch, select_targets(session, batch, names)[0])
        session.flush()
        for task, reason in zip(
            session.exec(select(Task).where(Task.batch_id == stopped).order_by(col(Task.id))),
            ("flash_failed", "busy", "timeout", None),
            strict=True,
        ):
            task.state, task.reason = ("failed", reason) if reason else ("updated", None)
        session.add(Batch(id=rb, firmware_id=rollback_fw, product_key=pk, module="default",
                          target_version=ROLLBACK))  # fmt: skip
    result = await start_rollback(ctx, RollbackRequest(stopped, rollback_fw))
    assert (result.batch_id, result.devices) == (rb, 2)  # failed, not busy
    client = await ctx.temporal()
    assert await executions(client, rb) == 1
    rolled = show_batch(ctx.engine, rb)
    assert (rolled["rollback_of"], rolled["rate_per_minute"]) == (stopped, RATE)
    assert show_batch(ctx.engine, stopped)["rollback_batch_id"] == rb
    again = await start_rollback(ctx, RollbackRequest(stopped, rollback_fw))  # a retry
    assert again.batch_id == rb and await executions(client, rb) == 1
    await client.get_workflow_handle(batch_workflow_id(rb)).terminate("no worker here")


# --- refused at create ---------------------------------------------------------------------


def refusals(engine, pk: str) -> list[tuple[dict, str]]:  # type: ignore[no-untyped-def]
    other_pk, _ = make_fleet(engine, 1)
    return [
        ({"rollback_firmware_id": make_firmware(engine, pk, version=ROLLBACK)}, "requires stop_at"),
        ({"stop_at": 20, "rollback_firmware_id": 2**31 - 1}, "does not exist"),
        (
            {"stop_at": 20, "rollback_firmware_id": make_firmware(engine, other_pk, ROLLBACK)},
            f"is for {other_pk}/default",
        ),
        (
            {"stop_at": 20, "rollback_firmware_id": make_firmware(engine, pk, module="wifi")},
            f"is for {pk}/wifi",
        ),
        ({"stop_at": 20, "rollback_firmware_id": make_firmware(engine, pk)}, "batch's own version"),
        (
            {
                "stop_at": 20,
                "rollback_firmware_id": make_firmware(engine, pk, ROLLBACK, state="unverified"),
            },
            "is unverified: verify it first",
        ),
        (
            {
                "stop_at": 20,
                "rollback_firmware_id": make_firmware(engine, pk, ROLLBACK, src_versions=["1.5"]),
            },
            "a diff from 1.5, not from the batch's 2.0.0",
        ),
    ]


async def test_create_and_dry_run_refuse_a_bad_rollback_firmware(ctx):
    pk, _ = make_fleet(ctx.engine, 2, version=GOOD)
    fw = make_firmware(ctx.engine, pk)
    for change, detail in refusals(ctx.engine, pk):
        inp = BatchInput("", fw, src_versions=[GOOD], **change)
        for attempt in (lambda i=inp: create_batch(ctx, i), lambda i=inp: _preview(ctx, i)):
            with pytest.raises(InvalidInput) as refused:
                await attempt()
            assert refused.value.field == "rollback_firmware", change
            assert detail in refused.value.message, (change, refused.value.message)
    with Session(ctx.engine) as session:
        assert session.exec(select(func.count()).select_from(Batch)).one() == 0
    # A full image, or a diff from the batch's version, unverified but needing no verification:
    # accepted (by the dry run: nothing is created).
    for rollback in (
        make_firmware(ctx.engine, pk, ROLLBACK, src_versions=["2.0.0"]),
        make_firmware(ctx.engine, pk, ROLLBACK, state="unverified", need_verify=False),
    ):
        inp = BatchInput("", fw, src_versions=[GOOD], stop_at=20, rollback_firmware_id=rollback)
        assert (await _preview(ctx, inp)).targets == 2


async def _preview(ctx: Context, inp: BatchInput):  # type: ignore[no-untyped-def]
    return preview_batch(ctx.engine, inp)
