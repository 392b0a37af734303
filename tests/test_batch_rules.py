"""The seed's rules for a static batch, each against the real Temporal dev server and Mosquitto.

The test plays the bridge (tests/test_workflow_support.FakeBridge): it writes what the bridge
writes and sends the signals the bridge sends.
"""

from __future__ import annotations

import itertools

import pytest
from sqlmodel import Session, select

from ota.contracts import (
    BATCH_WORKFLOW,
    BatchInput,
    CancelRequest,
    batch_workflow_id,
)
from ota.db.models import Batch
from ota.errors import Conflict
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    attempts_of,
    batch_row,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)


def offline_and_started(engine, batch_id, count):
    tasks = tasks_of(engine, batch_id).values()
    return len(tasks) == count and all(t.reason == "offline" and t.started for t in tasks)


def pushed_to(pushes, name):
    return [p for n, p in pushes if n == name]


async def result_of(ctx, batch_id):
    handle = (await ctx.temporal()).get_workflow_handle(batch_workflow_id(batch_id))
    return await handle.result()


async def test_offline_device_is_pushed_when_it_comes_online(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 2, online=False)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(bridge.client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: offline_and_started(ctx.engine, b["id"], 2))
        assert set(states_of(ctx.engine, b["id"]).values()) == {"to_be_pushed"}
        assert pushes == []

        # Waiting devices are visible in the Web UI: OtaState = "to_be_pushed" (set when the
        # workflow task that recorded the offline device completes).
        async def ota_state() -> list[str] | None:
            desc = await bridge.handle(names[0]).describe()
            return desc.search_attributes.get("OtaState")

        assert await eventually(ota_state) == ["to_be_pushed"]
        await bridge.online(names[0])
        await eventually(lambda: states_of(ctx.engine, b["id"])[names[0]] == "pushed")
        await eventually(lambda: [n for n, _ in pushes] == [names[0]])
        await bridge.updated(names[0])
        await bridge.online(names[1])
        await eventually(lambda: states_of(ctx.engine, b["id"])[names[1]] == "pushed")
        await bridge.updated(names[1])
        assert (await result_of(ctx, b["id"]))["counts"] == {"updated": 2}


async def test_device_busy_in_another_batch_fails_busy(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with running_worker(bridge.client, ctx):
        first = await create_batch(
            ctx,
            BatchInput("", fw, src_versions=["1.0.0"], target="selected", device_names=names[:1]),
        )
        await eventually(lambda: states_of(ctx.engine, first["id"]) == {names[0]: "pushed"})
        second = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: states_of(ctx.engine, second["id"]).get(names[1]) == "pushed")
        await eventually(lambda: states_of(ctx.engine, second["id"])[names[0]] == "failed")
        assert tasks_of(ctx.engine, second["id"])[names[0]].reason == "busy"
        # The device's update in the first batch goes on untouched.
        assert states_of(ctx.engine, first["id"]) == {names[0]: "pushed"}
        for name in names:
            await bridge.updated(name)
        assert (await result_of(ctx, second["id"]))["counts"] == {"failed": 1, "updated": 1}
        assert (await result_of(ctx, first["id"]))["counts"] == {"updated": 1}


async def test_failure_report_retries_up_to_the_maximum_then_fails(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    dn = names[0]
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(bridge.client, ctx):
        b = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], retry_interval_minutes=0, max_retries=2)
        )
        for attempt in (1, 2, 3):
            await eventually(lambda a=attempt: attempts_of(ctx.engine, b["id"], dn) == a)
            await eventually(lambda a=attempt: len(pushed_to(pushes, dn)) == a)
            bridge.progress(dn)
            # During a retry the state stays what it was (seed): in_upgrade here.
            assert states_of(ctx.engine, b["id"])[dn] == "in_upgrade"
            await bridge.failed(dn, "download_failed")  # progress -2
        result = await result_of(ctx, b["id"])
    task = tasks_of(ctx.engine, b["id"])[dn]
    assert (task.state, task.reason, task.attempts) == ("failed", "download_failed", 3)
    assert result["counts"] == {"failed": 1}
    assert len(pushed_to(pushes, dn)) == 3
    # The Web UI finds it with OtaState = "failed".
    desc = await bridge.handle(dn).describe()
    assert desc.search_attributes["OtaState"] == ["failed"]


async def test_version_mismatch_is_retried_and_can_then_succeed(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    dn = names[0]
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(bridge.client, ctx):
        b = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], retry_interval_minutes=0, max_retries=1)
        )
        await eventually(lambda: len(pushed_to(pushes, dn)) == 1)
        await bridge.failed(dn, "version_mismatch")
        await eventually(lambda: len(pushed_to(pushes, dn)) == 2)
        await eventually(lambda: attempts_of(ctx.engine, b["id"], dn) == 2)
        await bridge.updated(dn)
        assert (await result_of(ctx, b["id"]))["counts"] == {"updated": 1}


async def test_cancel_all_cancels_every_task_and_never_retries(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(bridge.client, ctx):
        # 10 a minute: one device every 6 s, so the others are still waiting (rate_limited).
        b = await create_batch(
            ctx,
            BatchInput(
                "",
                fw,
                src_versions=["1.0.0"],
                rate_per_minute=10,
                retry_interval_minutes=0,
                max_retries=5,
            ),
        )
        await eventually(lambda: "pushed" in states_of(ctx.engine, b["id"]).values())
        tasks = tasks_of(ctx.engine, b["id"])
        waiting = [n for n, t in tasks.items() if t.state == "to_be_pushed"]
        assert waiting and all(tasks[n].reason == "rate_limited" for n in waiting)
        first = next(n for n, t in tasks.items() if t.state == "pushed")
        bridge.progress(first)
        await cancel_batch(ctx, b["id"], all_tasks=True)
        result = await result_of(ctx, b["id"])
        await bridge.handle(first).result()
    assert result["state"] == "canceled"
    tasks = tasks_of(ctx.engine, b["id"])
    assert {(t.state, t.reason) for t in tasks.values()} == {("canceled", "canceled")}
    assert tasks[first].attempts == 1 and len(pushed_to(pushes, first)) == 1
    assert batch_row(ctx.engine, b["id"]).state == "canceled"


async def test_phased_selected_and_skipped(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 10)
    make_fleet(ctx.engine, 2, version="2.0.0", product_key=pk, prefix="new")
    fw = make_firmware(ctx.engine, pk)
    async with running_worker(await ctx.temporal(), ctx):
        phased = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], target="phased", percent=25)
        )
        selected = await create_batch(
            ctx,
            BatchInput(
                "",
                fw,
                src_versions=["1.0.0"],
                target="selected",
                device_names=["new00000", "dev00003"],
            ),
        )
        await eventually(lambda: batch_row(ctx.engine, phased["id"]).prepared_at)
        await eventually(lambda: batch_row(ctx.engine, selected["id"]).prepared_at)
    # 25% of the 10 devices on 1.0.0, rounded down; the 2 on 2.0.0 are skipped, not failed.
    p = batch_row(ctx.engine, phased["id"])
    assert (p.total, p.skipped) == (2, 2)
    assert len(tasks_of(ctx.engine, phased["id"])) == 2
    s = batch_row(ctx.engine, selected["id"])
    assert (s.total, s.skipped) == (1, 1)
    assert list(tasks_of(ctx.engine, selected["id"])) == ["dev00003"]


async def test_phased_percent_gives_at_least_one_device(ctx):
    pk, _ = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk)
    async with running_worker(await ctx.temporal(), ctx):
        b = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], target="phased", percent=10)
        )
        await eventually(lambda: batch_row(ctx.engine, b["id"]).prepared_at)
    assert batch_row(ctx.engine, b["id"]).total == 1


async def test_unverified_firmware_is_refused(ctx):
    pk, _ = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    with pytest.raises(Conflict, match="verify"):
        await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
    with Session(ctx.engine) as session:
        assert session.exec(select(Batch)).first() is None
    # A firmware added with need_verify False needs no verification.
    fw = make_firmware(ctx.engine, pk, state="unverified", need_verify=False)
    async with running_worker(await ctx.temporal(), ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: batch_row(ctx.engine, b["id"]).prepared_at)


async def test_a_batch_started_from_the_temporal_cli_registers_itself(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        # What `temporal workflow start --type BatchWorkflow --input '{...}'` sends: plain JSON.
        handle = await client.start_workflow(
            BATCH_WORKFLOW,
            {
                "batch_id": "cli42",
                "firmware_id": fw,
                "src_versions": ["1.0.0"],
                "poll_seconds": 0.5,
            },
            id=batch_workflow_id("cli42"),
            task_queue=ctx.settings.task_queue,
        )
        await eventually(lambda: set(states_of(ctx.engine, "cli42").values()) == {"pushed"})
        for name in names:
            await bridge.updated(name)
        await handle.result()
        desc = await handle.describe()
    assert batch_row(ctx.engine, "cli42").state == "completed"
    assert desc.search_attributes["OtaBatchId"] == ["cli42"]
    assert desc.search_attributes["OtaState"] == ["completed"]


async def test_cancel_scheduled_on_a_running_static_batch_changes_nothing(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: states_of(ctx.engine, b["id"]) == {names[0]: "pushed"})
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
        await handle.signal("cancel", CancelRequest())  # default scope: scheduled
        await bridge.updated(names[0])
        assert (await handle.result())["state"] == "completed"


async def test_rate_spreads_the_starts_over_the_minute(ctx):
    # 60 a minute: bursts of 5 every 5 s (tests/test_pacer.py checks any-minute windows).
    pk, _ = make_fleet(ctx.engine, 11)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    async with running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=60))
        query = f'ParentWorkflowId = "{batch_workflow_id(b["id"])}"'

        async def all_started():
            return (await client.count_workflows(query)).count == 11

        await eventually(all_started, timeout=30)
        starts = sorted([w.start_time async for w in client.list_workflows(query)])
        await cancel_batch(ctx, b["id"], all_tasks=True)
    offsets = [(s - starts[0]).total_seconds() for s in starts]
    # A burst is a run of starts less than 2 s apart. The pacer's clock is its workflow task's
    # time, which comes a little before the first child's recorded start, so the gap between
    # bursts is measured with some slack rather than from the first start.
    bursts: list[list[float]] = [[offsets[0]]]
    for o in offsets[1:]:
        if o - bursts[-1][-1] < 2:
            bursts[-1].append(o)
        else:
            bursts.append([o])
    assert [len(x) for x in bursts] == [5, 5, 1], offsets
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(bursts)]
    assert all(4 <= g <= 7 for g in gaps), offsets
