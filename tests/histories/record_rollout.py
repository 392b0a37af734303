"""The rollout controls' scenarios for tests/histories/record_release.py (since
release-2026-11-30-rollout): pause and resume, the stop rule, phase gates, a maintenance window,
the ramp, the in-flight cap and the pickup timeout. A few devices each, so the files stay small.

Each control is asked of a batch only when it has the option, so every scenario here is a batch
created with one; the recorder checks the outcome, the replay test (tests/test_replay_release.py)
checks it again from the history, with the control's patch marker.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ota.services.batch_signals import cancel_batch, pause_batch, promote_batch, resume_batch
from tests.histories.record_release import (
    MQTT_URL,
    Recording,
    first_run_id,
    has_event,
    until,
)
from tests.test_workflow_support import (
    FakeBridge,
    batch_row,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    upgrade_listener,
)

# One push every 5 s (workflows/pacing.py: bursts of rate // 12): room for a signal between two.
SLOW_RATE = 12


def pushed(pushes: list[tuple[str, dict]]) -> list[str]:
    return sorted({n for n, _ in pushes})


def count_reaches(pushes: list[tuple[str, dict]], n: int) -> Callable[[], bool]:
    return lambda: len(pushes) == n


async def later_run(rec: Recording, workflow_id: str, first: str) -> bool:
    return (await rec.env.client.get_workflow_handle(workflow_id).describe()).run_id != first


async def paused_resumed(rec: Recording) -> None:
    """Three devices at 12 a minute, paused after the first push: the pause waits in a fresh
    run (continued as new), the operator resumes, the other two are pushed."""
    ctx = rec.context("pause")
    pk = "rel-pause"
    _, names = make_fleet(ctx.engine, 3, product_key=pk, prefix="pa-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, rate_per_minute=SLOW_RATE)
        first = await first_run_id(handle)
        await until(lambda: len(pushes) == 1)
        await pause_batch(ctx, b)
        await until(lambda: batch_row(ctx.engine, b).state == "paused")
        await until(lambda: later_run(rec, handle.id, first))
        assert len(pushes) == 1, pushes
        await bridge.updated(pushed(pushes)[0])
        await resume_batch(ctx, b)
        await until(lambda: pushed(pushes) == names)
        for name in names[1:]:
            await bridge.updated(name)
        result = await handle.result()
        assert (result["state"], result["counts"]) == ("completed", {"updated": 3}), result
    await rec.save("batch-paused-run1", handle, run_id=first)
    await rec.save("batch-resumed-last", handle)


async def stop_rule_paused(rec: Recording) -> None:
    """Four devices at 12 a minute, a stop rule of 50% after 2 devices: the first two fail, the
    rule pauses the batch before the third push (its run continues as new, paused); then
    canceled. The first run is kept: the trip."""
    ctx = rec.context("stop")
    pk = "rel-stop"
    make_fleet(ctx.engine, 4, product_key=pk, prefix="st-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(
            ctx, firmware_id=fw, rate_per_minute=SLOW_RATE, stop_at=50, stop_min=2
        )
        first = await first_run_id(handle)
        for n in (1, 2):
            await until(count_reaches(pushes, n))
            await bridge.failed(_newest(pushes), "flash_failed")
        await until(lambda: batch_row(ctx.engine, b).state == "paused")
        note = "paused: 100% failed after 2 devices, threshold 50%"
        assert batch_row(ctx.engine, b).state_note == note
        await until(lambda: later_run(rec, handle.id, first))
        assert len(pushes) == 2, pushes
        await cancel_batch(ctx, b, all_tasks=True)
        result = await handle.result()
        assert (result["state"], result["counts"]) == (
            "canceled",
            {"failed": 2, "canceled": 2},
        ), result
    await rec.save("batch-stop-paused", handle, run_id=first)


def _newest(pushes: list[tuple[str, dict]]) -> str:
    return pushes[-1][0]


async def manual_phases(rec: Recording) -> None:
    """Two devices in two phases (50%, then all), promoted by the operator: the first device,
    the gate (in a fresh run), `promote`, the second."""
    ctx = rec.context("phase-manual")
    pk = "rel-gate"
    _, names = make_fleet(ctx.engine, 2, product_key=pk, prefix="g-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, phases=[50], promote="manual")
        first = await first_run_id(handle)
        note = "phase 1 of 2 (1 devices): waiting for promote"
        await until(lambda: batch_row(ctx.engine, b).state_note == note)
        assert len(pushes) == 1, pushes
        await bridge.updated(pushes[0][0])  # success does not open a manual gate
        assert (await promote_batch(ctx, b))["at_gate"]
        await until(lambda: pushed(pushes) == names)
        await bridge.updated(_newest(pushes))
        result = await handle.result()
        assert (result["counts"], result["phase"]) == ({"updated": 2}, 1), result
    await rec.save("batch-phase-gate-run1", handle, run_id=first)
    await rec.save("batch-phase-promoted", handle)


async def auto_phases(rec: Recording) -> None:
    """Two devices in two phases, promoted at 100%: the gate opens itself once the first
    device runs the new version. The last run (the gate's) is kept."""
    ctx = rec.context("phase-auto")
    pk = "rel-auto"
    _, names = make_fleet(ctx.engine, 2, product_key=pk, prefix="a-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, phases=[50], promote_at=100)
        note = "phase 1 of 2 (1 devices): promotes when 100% run the new version"
        await until(lambda: batch_row(ctx.engine, b).state_note == note)
        assert len(pushes) == 1, pushes
        await bridge.updated(pushes[0][0])
        await until(lambda: pushed(pushes) == names)
        await bridge.updated(_newest(pushes))
        result = await handle.result()
        assert (result["counts"], result["phase"]) == ({"updated": 2}, 1), result
    await rec.save("batch-phase-auto-promoted", handle)


async def window_wait(rec: Recording) -> None:
    """A daily one-hour window that opens in three hours: the batch records the hold, waits on
    a timer fast-forwarded just past the opening (then pushes in real time), completes."""
    ctx = rec.context("window")
    pk = "rel-win"
    _, names = make_fleet(ctx.engine, 2, product_key=pk, prefix="win-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    opens = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        created = datetime.now(UTC)
        b, handle = await rec.start_batch(
            ctx, firmware_id=fw, window=f"{opens.minute} {opens.hour} * * *", window_minutes=60
        )
        note = f"outside the maintenance window: the next opens at {opens:%Y-%m-%d %H:%M} UTC"
        await until(lambda: batch_row(ctx.engine, b).state_note == note)
        await until(lambda: has_event(handle, "timer_started_event_attributes"))
        assert pushes == []
        # Only just past the opening: once devices push, the pacer's clock runs in real time.
        assert await rec.env.fast_forward(handle, opens - created + timedelta(seconds=2))
        await until(lambda: pushed(pushes) == names)
        for name in names:
            await bridge.updated(name)
        result = await handle.result()
        assert result["counts"] == {"updated": 2}, result
    await rec.save("batch-window-waited", handle)


async def ramp(rec: Recording) -> None:
    """Three devices, a ramp from 12 a minute times 5 for every updated device, up to 60: the
    first device updates, the rate rises, the other two follow."""
    ctx = rec.context("ramp")
    pk = "rel-ramp"
    _, names = make_fleet(ctx.engine, 3, product_key=pk, prefix="r-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(
            ctx,
            firmware_id=fw,
            rate_per_minute=60,
            ramp_base=SLOW_RATE,
            ramp_factor=5,
            ramp_every=1,
        )
        await until(lambda: len(pushes) == 1)
        await bridge.updated(pushes[0][0])
        await until(lambda: pushed(pushes) == names)
        for name in names:
            if states_of(ctx.engine, b)[name] != "updated":
                await bridge.updated(name)
        result = await handle.result()
        assert (result["counts"], result["rate"]) == ({"updated": 3}, 60), result
    await rec.save("batch-ramp", handle)


async def capped(rec: Recording) -> None:
    """Three devices, at most one in flight: each push waits for the one before to finish."""
    ctx = rec.context("cap")
    pk = "rel-cap"
    _, names = make_fleet(ctx.engine, 3, product_key=pk, prefix="cap-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, max_in_flight=1)
        for n in (1, 2, 3):
            await until(count_reaches(pushes, n))
            assert len(pushes) == n  # the cap: no second device while one is in flight
            await bridge.updated(_newest(pushes))
        assert pushed(pushes) == names
        result = await handle.result()
        assert result["counts"] == {"updated": 3}, result
    await rec.save("batch-capped", handle)


async def pickup_timeout(rec: Recording) -> None:
    """A device silent after its push (pickup timeout 5 minutes, no retry): fast-forwarded past
    it, the device fails no_response."""
    ctx = rec.context("pickup")
    pk = "rel-pick"
    _, (name,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="pick-")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, rec.env.client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(rec.env.client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, pickup_timeout_minutes=5)
        await until(lambda: len(pushes) == 1)
        device = bridge.handle(name)
        await until(lambda: has_event(device, "timer_started_event_attributes"))
        assert await rec.env.fast_forward(device, timedelta(minutes=6)) is False  # it ended
        result = await device.result()
        assert (result["state"], result["reason"]) == ("failed", "no_response"), result
        assert (await handle.result())["counts"] == {"failed": 1}
    await rec.save("device-pickup-timeout", device)


GROUPS = (
    paused_resumed,
    stop_rule_paused,
    manual_phases,
    auto_phases,
    window_wait,
    ramp,
    capped,
    pickup_timeout,
)
