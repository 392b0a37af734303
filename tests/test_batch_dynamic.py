"""Dynamic batches: they keep adding devices that come to match, until their policy is canceled."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from ota.contracts import BatchInput, batch_workflow_id
from ota.db.engine import session_scope
from ota.db.models import Device, DeviceModule
from ota.errors import Conflict
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    batch_row,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
)


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(
        tmp_path,
        mqtt_url,
        temporal_env.client,
        batch_poll_seconds=0.5,
        dynamic_poll_seconds=0.3,
    )


def dynamic(fw: int) -> BatchInput:
    return BatchInput("", fw, policy="dynamic", src_versions=["1.0.0"])


def report_version(ctx, pk: str, version: str) -> None:
    """What the bridge records when devices of `pk` report (inform) a version."""
    with session_scope(ctx.engine) as session:
        ids = select(Device.id).where(Device.product_key == pk)
        session.exec(
            update(DeviceModule).where(col(DeviceModule.device_id).in_(ids)).values(version=version)
        )


async def test_dynamic_adds_devices_that_match_later(ctx):
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    async with running_worker(await ctx.temporal(), ctx):
        b = await create_batch(ctx, dynamic(fw))
        await eventually(lambda: states_of(ctx.engine, b["id"]) == {names[0]: "pushed"})
        # A newly activated device on a source version, and one that reports it later.
        _, new = make_fleet(ctx.engine, 1, product_key=pk, prefix="new")
        _, (late,) = make_fleet(ctx.engine, 1, version="0.9.0", product_key=pk, prefix="late")
        await eventually(lambda: states_of(ctx.engine, b["id"]).get(new[0]) == "pushed")
        assert late not in states_of(ctx.engine, b["id"])
        assert batch_row(ctx.engine, b["id"]).total == 2
        await cancel_batch(ctx, b["id"], all_tasks=True)


async def test_dynamic_device_reporting_a_source_version_joins(ctx):
    pk, names = make_fleet(ctx.engine, 2, version="0.9.0")
    fw = make_firmware(ctx.engine, pk)
    async with running_worker(await ctx.temporal(), ctx):
        b = await create_batch(ctx, dynamic(fw))
        await eventually(lambda: batch_row(ctx.engine, b["id"]).prepared_at)
        assert states_of(ctx.engine, b["id"]) == {}
        report_version(ctx, pk, "1.0.0")
        await eventually(lambda: set(states_of(ctx.engine, b["id"]).values()) == {"pushed"})
        assert sorted(states_of(ctx.engine, b["id"])) == names
        await cancel_batch(ctx, b["id"], all_tasks=True)


async def test_default_cancel_stops_the_policy_only(ctx):
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        b = await create_batch(ctx, dynamic(fw))
        await eventually(lambda: states_of(ctx.engine, b["id"]) == {dn: "pushed"})
        await cancel_batch(ctx, b["id"])  # default scope: the policy
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state == "canceled")
        _, (new,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="new")
        # A new dynamic batch of the same firmware is allowed once the policy is canceled.
        again = await create_batch(ctx, dynamic(fw))
        await eventually(lambda: new in states_of(ctx.engine, again["id"]))
        assert new not in states_of(ctx.engine, b["id"])
        # The ongoing task of the canceled policy goes on to the end.
        assert states_of(ctx.engine, b["id"]) == {dn: "pushed"}
        await bridge.updated(dn)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
        result = await handle.result()
        await cancel_batch(ctx, again["id"], all_tasks=True)
    assert result["counts"] == {"updated": 1}
    assert result["state"] == "canceled"


async def test_one_dynamic_batch_per_firmware(ctx):
    pk, _ = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    async with running_worker(await ctx.temporal(), ctx):
        b = await create_batch(ctx, dynamic(fw))
        with pytest.raises(Conflict, match="cancel it first"):
            await create_batch(ctx, dynamic(fw))
        await cancel_batch(ctx, b["id"], all_tasks=True)


async def test_the_latest_dynamic_batch_wins(ctx):
    pk, _ = make_fleet(ctx.engine, 0)
    older = make_firmware(ctx.engine, pk, version="2.0.0")
    newer = make_firmware(ctx.engine, pk, version="3.0.0")
    async with running_worker(await ctx.temporal(), ctx):
        first = await create_batch(ctx, dynamic(older))
        second = await create_batch(ctx, dynamic(newer))
        await eventually(lambda: batch_row(ctx.engine, second["id"]).prepared_at)
        _, names = make_fleet(ctx.engine, 3, product_key=pk)
        await eventually(lambda: len(states_of(ctx.engine, second["id"])) == 3)
        # The older policy saw the same devices but the later one applies to them.
        assert states_of(ctx.engine, first["id"]) == {}
        await cancel_batch(ctx, first["id"], all_tasks=True)
        await cancel_batch(ctx, second["id"], all_tasks=True)
