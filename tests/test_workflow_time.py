"""Rules that take minutes to days (schedules, retries, timeouts, the rate), in virtual time.

`time_skipping_env` stamps "skip time whenever idle" on every workflow its client starts; these
tests start theirs inside `with_time_skipping_disabled()` and move each clock on purpose with
`env.fast_forward(handle, duration)`. What we found (docs/design.md, Testing):
- children inherit the parent's setting and its virtual start time, then keep their own clock;
- a parent with an open child is not skipped at all, so the pacer's rate is tested in real
  time (tests/test_batch_rules.py) and by its arithmetic (tests/test_pacer.py);
- each skipped timer costs about a second of wall time; local activities are unaffected.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col

from ota.contracts import BatchInput, batch_workflow_id
from ota.db.engine import session_scope
from ota.db.models import Device, Task
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch, list_tasks
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
def ctx(time_skipping_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, time_skipping_env.client, batch_poll_seconds=0.5)


async def start(env, ctx, **batch):
    """Create a batch whose workflows run in real time until a test fast-forwards one."""
    with env.with_time_skipping_disabled():
        b = await create_batch(ctx, BatchInput("", src_versions=["1.0.0"], **batch))
    return b, env.client.get_workflow_handle(batch_workflow_id(b["id"]))


def set_online(ctx, pk: str, name: str, online: bool) -> None:
    with session_scope(ctx.engine) as session:
        session.exec(
            update(Device)
            .where(col(Device.product_key) == pk, col(Device.name) == name)
            .values(online=online)
        )


def first_progress(ctx, batch_id, name, at):
    """The bridge's first-progress write, stamped with the device workflow's virtual time."""
    with session_scope(ctx.engine) as session:
        session.exec(
            update(Task)
            .where(col(Task.batch_id) == batch_id, col(Task.device_name) == name)
            .values(state="in_upgrade", first_progress_at=at, progress=5)
        )


async def test_scheduled_batch_starts_at_its_time(time_skipping_env, ctx, mqtt_url):
    env = time_skipping_env
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    at = datetime.now(UTC) + timedelta(days=3)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        b, handle = await start(env, ctx, firmware_id=fw, scheduled_at=at.isoformat())
        await eventually(lambda: batch_row(ctx.engine, b["id"]).prepared_at)
        assert batch_row(ctx.engine, b["id"]).state == "scheduled"
        labels = {t["label"] for t in list_tasks(ctx.engine, b["id"])}
        assert labels == {f"to_be_pushed (Timing: {at:%Y/%m/%d %H:%M:%S})"}
        # Only up to the schedule: a workflow with open children is never skipped (its clock
        # would run ahead of theirs), so the pacing after it runs in real time anyway.
        assert await env.fast_forward(handle, timedelta(days=3))
        await eventually(lambda: set(states_of(ctx.engine, b["id"]).values()) == {"pushed"})
        # The task is recorded pushed just before the push is published: wait for it to arrive.
        await eventually(lambda: sorted(n for n, _ in pushes) == names)
        assert batch_row(ctx.engine, b["id"]).state == "in_progress"


async def test_cancel_of_a_scheduled_batch_cancels_its_tasks(time_skipping_env, ctx, mqtt_url):
    env = time_skipping_env
    pk, _ = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk)
    at = datetime.now(UTC) + timedelta(hours=2)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        b, handle = await start(env, ctx, firmware_id=fw, scheduled_at=at.isoformat())
        await eventually(lambda: batch_row(ctx.engine, b["id"]).prepared_at)
        await cancel_batch(ctx, b["id"])  # the default scope: scheduled tasks
        result = await handle.result()
    assert result["state"] == "canceled" and result["counts"] == {"canceled": 3}
    assert {(t.reason, t.started) for t in tasks_of(ctx.engine, b["id"]).values()} == {
        ("canceled", False)
    }
    assert pushes == []


async def test_retry_after_the_interval_up_to_the_maximum(time_skipping_env, ctx, mqtt_url):
    env = time_skipping_env
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, env.client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        b, handle = await start(env, ctx, firmware_id=fw, retry_interval_minutes=60, max_retries=2)
        for attempt in (1, 2, 3):
            await eventually(lambda a=attempt: attempts_of(ctx.engine, b["id"], dn) == a)
            await bridge.failed(dn, "download_failed")
            if attempt < 3:
                # Nothing happens for an hour, and the state stays pushed meanwhile (seed).
                assert await env.fast_forward(bridge.handle(dn), timedelta(minutes=59))
                assert states_of(ctx.engine, b["id"])[dn] == "pushed"
                assert attempts_of(ctx.engine, b["id"], dn) == attempt
                assert await env.fast_forward(bridge.handle(dn), timedelta(minutes=2))
        result = await bridge.handle(dn).result()
        await eventually(lambda: len(pushes) == 3)
    assert (result["state"], result["reason"], result["attempts"]) == (
        "failed",
        "download_failed",
        3,
    )


async def test_timeout_counts_from_first_progress_and_never_retries(
    time_skipping_env, ctx, mqtt_url
):
    env = time_skipping_env
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, env.client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        b, _ = await start(
            env, ctx, firmware_id=fw, timeout_minutes=30, retry_interval_minutes=0, max_retries=5
        )
        await eventually(lambda: states_of(ctx.engine, b["id"]).get(dn) == "pushed")
        device = bridge.handle(dn)
        # No progress for 40 minutes: the timeout has not even begun.
        assert await env.fast_forward(device, timedelta(minutes=40))
        first_progress(ctx, b["id"], dn, await env.get_current_time(device))
        assert await env.fast_forward(device, timedelta(minutes=25))
        assert states_of(ctx.engine, b["id"])[dn] == "in_upgrade"
        assert await env.fast_forward(device, timedelta(minutes=10)) is False  # it ended
        result = await device.result()
    assert (result["state"], result["reason"], result["attempts"]) == ("failed", "timeout", 1)
    # A timeout is never retried: the second push is the last look before failing (no attempt).
    assert len(pushes) == 2


async def test_a_device_whose_report_was_lost_is_asked_once_more_before_it_times_out(
    time_skipping_env, ctx, mqtt_url
):
    """The device finished while the broker restarted and its report was dropped: at the
    timeout it is pushed once more, reports its version again, and ends updated, not failed."""
    env = time_skipping_env
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, env.client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        b, _ = await start(env, ctx, firmware_id=fw, timeout_minutes=30)
        await eventually(lambda: states_of(ctx.engine, b["id"]).get(dn) == "pushed")
        device = bridge.handle(dn)
        first_progress(ctx, b["id"], dn, await env.get_current_time(device))
        assert await env.fast_forward(device, timedelta(minutes=31))  # in its last look
        await eventually(lambda: len(pushes) == 2)
        assert states_of(ctx.engine, b["id"])[dn] == "in_upgrade"
        await bridge.updated(dn)  # the device's answer to the second push
        result = await device.result()
    assert (result["state"], result["attempts"]) == ("updated", 1)
    assert attempts_of(ctx.engine, b["id"], dn) == 1


async def test_an_offline_device_times_out_without_a_last_look(time_skipping_env, ctx, mqtt_url):
    env = time_skipping_env
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, env.client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        b, _ = await start(env, ctx, firmware_id=fw, timeout_minutes=30)
        await eventually(lambda: states_of(ctx.engine, b["id"]).get(dn) == "pushed")
        device = bridge.handle(dn)
        first_progress(ctx, b["id"], dn, await env.get_current_time(device))
        set_online(ctx, pk, dn, False)
        assert await env.fast_forward(device, timedelta(minutes=31)) is False  # it ended
        result = await device.result()
    assert (result["state"], result["reason"]) == ("failed", "timeout")
    assert len(pushes) == 1
