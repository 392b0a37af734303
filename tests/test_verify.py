"""Verification: a firmware is verified when every chosen device updates, else verify_failed."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from ota.contracts import VERIFY_WORKFLOW, VerifyInput, verify_workflow_id
from ota.db.models import Firmware
from ota.errors import Conflict, InvalidInput
from ota.services.verify import start_verify, wait_verify
from tests.test_workflow_support import (
    FakeBridge,
    batch_row,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    upgrade_listener,
)


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client)


def firmware_state(ctx, fw: int) -> str:
    with Session(ctx.engine) as session:
        firmware = session.get(Firmware, fw)
        assert firmware is not None
        return firmware.state


async def test_verified_when_every_device_updates(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(bridge.client, ctx):
        b = await start_verify(ctx, fw, names[:2], timeout=30)
        await eventually(lambda: set(states_of(ctx.engine, b["id"]).values()) == {"pushed"})
        assert firmware_state(ctx, fw) == "verifying"
        assert batch_row(ctx.engine, b["id"]).kind == "verify"
        with pytest.raises(Conflict):  # one verification at a time
            await start_verify(ctx, fw, names[2:])
        await eventually(lambda: sorted(n for n, _ in pushes) == names[:2])
        for name in names[:2]:
            await bridge.updated(name)
        shown = await wait_verify(ctx, b["id"])
    assert shown["firmware_state"] == "verified"
    assert shown["counts"] == {"updated": 2}
    assert sorted(n for n, _ in pushes) == names[:2]


async def test_verify_failed_when_a_device_fails(ctx):
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with running_worker(bridge.client, ctx):
        b = await start_verify(ctx, fw, names)
        await eventually(lambda: set(states_of(ctx.engine, b["id"]).values()) == {"pushed"})
        await bridge.updated(names[0])
        await bridge.failed(names[1], "verify_failed")  # progress -3: checksum or signature
        shown = await wait_verify(ctx, b["id"])
    assert shown["firmware_state"] == "verify_failed"
    assert shown["counts"] == {"updated": 1, "failed": 1}


async def test_verify_checks_its_devices(ctx):
    pk, names = make_fleet(ctx.engine, 1)
    make_fleet(ctx.engine, 1, version="2.0.0", product_key=pk, prefix="new")
    fw = make_firmware(ctx.engine, pk, state="unverified")
    with pytest.raises(InvalidInput, match="no-such"):
        await start_verify(ctx, fw, ["no-such"])
    with pytest.raises(InvalidInput, match="already runs 2.0.0"):
        await start_verify(ctx, fw, ["new00000"])
    with pytest.raises(InvalidInput, match="timeout"):
        await start_verify(ctx, fw, names, timeout=0)
    diff = make_firmware(
        ctx.engine, pk, version="3.0.0", src_versions=["2.0.0"], state="unverified"
    )
    with pytest.raises(InvalidInput, match="this diff applies to 2.0.0"):
        await start_verify(ctx, diff, names)


async def test_verify_started_from_the_temporal_cli(ctx):
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        handle = await client.start_workflow(
            VERIFY_WORKFLOW,
            VerifyInput("v1", fw, names),
            id=verify_workflow_id("v1"),
            task_queue=ctx.settings.task_queue,
        )
        await eventually(lambda: states_of(ctx.engine, "v1") == {names[0]: "pushed"})
        await bridge.updated(names[0])
        await handle.result()
    assert firmware_state(ctx, fw) == "verified"
