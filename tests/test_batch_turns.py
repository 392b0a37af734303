"""Issue 17: after an outage the fleet comes back at once; in a paced batch each reconnected
device takes its turn within the batch's rate instead of downloading the moment it connects.

The bridge's real record path (apply_reports) decides what to signal; the test sends those
signals with the bridge's Signaller, against the real dev server, worker and Mosquitto.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from ota import protocol
from ota.bridge.records import apply_reports
from ota.bridge.signals import Signaller
from ota.contracts import SIGNAL_DEVICES_ONLINE, SIGNAL_ONLINE, BatchInput, batch_workflow_id
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)


def offline_and_waiting(engine, batch_id: str, count: int) -> bool:  # type: ignore[no-untyped-def]
    tasks = tasks_of(engine, batch_id).values()
    return len(tasks) == count and all(t.reason == "offline" and t.started for t in tasks)


def bursts(times: list[float], gap: float = 2.0) -> list[list[float]]:
    """Runs of pushes less than `gap` seconds apart."""
    out: list[list[float]] = []
    for t in sorted(times):
        if out and t - out[-1][-1] < gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


async def test_a_fleet_coming_back_at_once_is_pushed_within_the_batch_rate(
    temporal_env, mqtt_url, tmp_path
):
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)
    devices, rate = 10, 60  # 60 a minute: bursts of 5 every 5 s (workflows/pacing.py)
    pk, names = make_fleet(ctx.engine, devices, online=False)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    stats: Counter[str] = Counter()
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=rate)
        )
        await eventually(lambda: offline_and_waiting(ctx.engine, b["id"], devices), timeout=30)
        assert pushes == []

        # The whole fleet reconnects in one flush of the bridge.
        loop_time = asyncio.get_running_loop().time
        came_back = loop_time()
        flush = apply_reports(ctx.engine, [protocol.Status(pk, n, True) for n in names])
        assert [(s.workflow_id, s.name) for s in flush.signals] == [
            (batch_workflow_id(b["id"]), SIGNAL_DEVICES_ONLINE)
        ], "a paced batch's devices are not signalled `online` by the bridge"
        assert {t.reason for t in tasks_of(ctx.engine, b["id"]).values()} == {"rate_limited"}
        arrived: dict[str, float] = {}

        def record_arrivals() -> bool:
            for name, _ in pushes:
                arrived.setdefault(name, loop_time() - came_back)
            return len(arrived) == devices

        await Signaller(client, stats).send(flush.signals)
        await eventually(record_arrivals, timeout=40, every=0.05)
        assert sorted(arrived) == names
        assert Counter(n for n, _ in pushes) == Counter({n: 1 for n in names})
        groups = bursts(list(arrived.values()))
        assert [len(g) for g in groups] == [5, 5], arrived
        gaps = [b2[0] - b1[0] for b1, b2 in itertools.pairwise(groups)]
        assert all(g >= 4 for g in gaps), arrived
        # Oldest task first, as new starts (within a burst the pushes run concurrently).
        assert sorted(n for n, t in arrived.items() if t in groups[0]) == names[:5]

        for name in names:
            await bridge.updated(name)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
        assert (await handle.result())["counts"] == {"updated": devices}


async def test_an_unpaced_batch_pushes_a_reconnected_device_at_once(
    temporal_env, mqtt_url, tmp_path
):
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)
    pk, names = make_fleet(ctx.engine, 2, online=False)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: offline_and_waiting(ctx.engine, b["id"], 2))
        flush = apply_reports(ctx.engine, [protocol.Status(pk, n, True) for n in names])
        assert sorted(s.name for s in flush.signals) == [SIGNAL_ONLINE, SIGNAL_ONLINE]
        await Signaller(client, Counter()).send(flush.signals)
        await eventually(lambda: set(states_of(ctx.engine, b["id"]).values()) == {"pushed"})
        assert sorted(n for n, _ in pushes) == names
        await cancel_batch(ctx, b["id"], all_tasks=True)


async def test_a_lost_nudge_is_made_up_by_the_pacers_next_count(temporal_env, mqtt_url, tmp_path):
    """The bridge marked the devices but its `devices_online` never arrived (it crashed after the
    commit): the pacer's periodic count asks for waiting devices too."""
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)
    pk, names = make_fleet(ctx.engine, 2, online=False)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=60))
        await eventually(lambda: offline_and_waiting(ctx.engine, b["id"], 2))
        apply_reports(ctx.engine, [protocol.Status(pk, n, True) for n in names])  # no signal
        await eventually(lambda: len(pushes) == 2, timeout=60)
        assert sorted(n for n, _ in pushes) == names
        await cancel_batch(ctx, b["id"], all_tasks=True)
