"""`--wait` shows the batch while it runs: plain lines in a pipe, a live bar on a terminal, and
the devices it waits for because they are offline, said as soon as their push found them so."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console
from sqlalchemy import update
from sqlmodel import col

from ota.contracts import verify_workflow_id
from ota.db.engine import session_scope
from ota.db.models import Device
from ota.services.batch_watch import BatchSnapshot, batch_snapshot
from ota.services.verify import start_verify
from starter import waiting
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
)


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client)


def offline(ctx, pk: str, name: str) -> None:
    with session_scope(ctx.engine) as session:
        session.exec(  # type: ignore[call-overload]
            update(Device)
            .where(col(Device.product_key) == pk, col(Device.name) == name)
            .values(online=False)
        )


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
async def test_wait_says_offline_devices_at_once_and_shows_progress(ctx, monkeypatch, terminal):
    pk, names = make_fleet(ctx.engine, 3)
    offline(ctx, pk, names[2])
    fw = make_firmware(ctx.engine, pk, state="unverified")
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120, soft_wrap=True)
    monkeypatch.setattr(waiting, "err_console", console)
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with running_worker(bridge.client, ctx):
        b = await start_verify(ctx, fw, names, timeout=30)
        wait = asyncio.create_task(
            waiting.wait_showing_progress(ctx, verify_workflow_id(b["id"]), b["id"])
        )
        # Said while the other two are still pushed: the user knows at once what it waits for.
        await eventually(lambda: "1 device offline: waiting for it" in out.getvalue())
        assert set(states_of(ctx.engine, b["id"]).values()) == {"pushed", "to_be_pushed"}
        assert not wait.done()
        for name in names[:2]:
            await bridge.updated(name)
        await bridge.online(names[2])
        await eventually(lambda: states_of(ctx.engine, b["id"])[names[2]] == "pushed")
        await bridge.updated(names[2])
        await asyncio.wait_for(wait, 30)
    text = out.getvalue()
    assert "the 1 offline device came online" in text
    if terminal:  # rich's bar: done of total and the counts, redrawn in place
        assert "\x1b[" in text and "3/3" in text and "updated 3" in text
    else:  # the last line is the outcome, however soon it came after the one before
        last = text.strip().splitlines()[-1]
        assert last == f"batch {b['id']} completed: 3 of 3 done (updated 3)"
        assert "\x1b[" not in text


async def test_snapshot_counts_active_offline_tasks(ctx):
    pk, names = make_fleet(ctx.engine, 2, online=False)
    fw = make_firmware(ctx.engine, pk, state="unverified")
    bridge = FakeBridge(ctx.engine, await ctx.temporal(), pk)
    async with running_worker(bridge.client, ctx):
        b = await start_verify(ctx, fw, names, timeout=30)
        snap = await eventually(
            lambda: (s := batch_snapshot(ctx.engine, b["id"])).offline == 2 and s
        )
        assert (snap.state, snap.total, snap.done) == ("in_progress", 2, 0)
        assert waiting.counts_text(snap) == "to_be_pushed 2"
        await (await ctx.temporal()).get_workflow_handle(verify_workflow_id(b["id"])).cancel()


def test_plain_lines_at_most_every_ten_seconds_and_the_last_always(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(waiting.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    view = waiting.PlainView(Console(file=out, width=200), "b1")

    def snap(updated: int) -> BatchSnapshot:
        return BatchSnapshot("b1", "in_progress", 10, {"updated": updated, "pushed": 10 - updated})

    view.show(snap(1))
    clock[0] += 3
    view.show(snap(2))  # too soon: kept
    clock[0] += 3
    view.show(snap(3))
    clock[0] += 5
    view.show(snap(3))  # 11 s after the first line: said now
    view.close()
    assert out.getvalue().splitlines() == [
        "batch b1 in_progress: 1 of 10 done (pushed 9, updated 1)",
        "batch b1 in_progress: 3 of 10 done (pushed 7, updated 3)",
    ]
