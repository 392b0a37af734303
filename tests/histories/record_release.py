"""Records a release's histories for tests/test_replay_release.py: run by hand, never by pytest.

    PYTHONPATH=. .venv/bin/python -m tests.histories.record_release [OUT_DIR]

Device workflows wait for days and batches run for hours, so the next release's worker replays
histories this release's code wrote. Each release records one directory, named by its date
(default OUT_DIR: tests/histories/release-YYYY-MM-DD, today in UTC; an existing one is never
overwritten), with one file per scenario of SCENARIOS below. The recorder checks each outcome as
it goes, so a scenario that did not happen fails here rather than leaving a wrong file.

To record the next release's set: at the release's commit, run the command above (PostgreSQL is
not needed: each group has a SQLite database of its own; Mosquitto on 127.0.0.1:1883 is, for the
pushes), commit the new directory with a README.md of its own (which commit recorded it), and
add its line to tests/histories/README.md. A second recording on the same day adds a suffix to
the date (release-2026-11-30-rollout): it still sorts after the day's first. A scenario added
later is listed in SCENARIOS with `since`, the first release directory that holds it; the replay
test then asks it of that release and every later one, never of older ones. The rollout
controls' scenarios live in record_rollout.py.

It runs the real dev server with a per-workflow virtual clock (start_time_skipping_v2): every
workflow starts in real time and a scenario moves one clock on purpose with `fast_forward`
(retry intervals, timeouts, the schedule: tests/test_workflow_time.py does the same). The
continued-as-new device runs on a second server told to suggest continue-as-new after a few
events: the suggestion is part of the history, so today's code replays it without a patch.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from ota import protocol
from ota.bridge.arrivals import DynamicBatches
from ota.bridge.records import apply_reports
from ota.bridge.signals import Signaller
from ota.context import Context
from ota.contracts import (
    DEVICE_WORKFLOW,
    SEARCH_ATTRIBUTES,
    BatchInput,
    DeviceUpgradeInput,
    batch_workflow_id,
    verify_workflow_id,
)
from ota.db.engine import session_scope
from ota.db.models import Task
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from ota.services.verify import start_verify, wait_verify
from tests.fixtures.temporal import DEV_SERVER_ARGS, temporal_binary
from tests.test_workflow_support import (
    FakeBridge,
    attempts_of,
    batch_row,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    make_task,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)

HERE = Path(__file__).resolve().parent
MQTT_URL = "mqtt://127.0.0.1:1883"
FIRST_RELEASE = "release-2026-11-30"
ROLLOUT_RELEASE = "release-2026-11-30-rollout"  # the pacer's rollout controls (record_rollout.py)
NUDGE_RELEASE = "release-2026-12-01"  # the bridge's nudge of dynamic batches (not recorded yet)
# The server suggests continue-as-new this early for the continued device only (its own server).
SUGGEST_CONTINUE_AFTER_EVENTS = 8


@dataclass(frozen=True)
class Scenario:
    about: str
    since: str = FIRST_RELEASE  # the first release directory recorded with it


SCENARIOS: dict[str, Scenario] = {
    "device-happy": Scenario("pushed, reports updated"),
    "device-offline-online": Scenario("offline at its push, `online`, pushed, updated"),
    "device-retry": Scenario("a failure report, the retry interval's timer, pushed again, updated"),
    "device-repush-on-reconnect": Scenario(
        "`online` while waiting for the report: pushed again (recheck), then updated"
    ),
    "device-timeout": Scenario(
        "progress, the timeout, the last look (recheck) and its grace pass: failed, timeout"
    ),
    "device-timeout-answered": Scenario("the timeout's last look is answered: updated"),
    "device-cancel-pushed": Scenario("canceled while waiting for its report"),
    "device-cancel-offline": Scenario("canceled while waiting offline"),
    "device-continued-run1": Scenario("offline for the whole re-check: continued as new"),
    "device-continued-run2": Scenario("the next run: pushed on `online`, updated"),
    "batch-static": Scenario("an unpaced static batch of the device scenarios above, completed"),
    "batch-cancel-all": Scenario("cancel --all of a pushed and an offline device"),
    "batch-continued-run1": Scenario("the pacer's first run: two starts, continued as new"),
    "batch-continued-last": Scenario("the pacer's last run: the fifth start, watched, completed"),
    "batch-paced-turns": Scenario("rate 24/min, offline fleet back: `devices_online`, turns"),
    "device-paced-turn": Scenario("a device of that batch: offline, its turn's `online`, updated"),
    "batch-scheduled": Scenario("waits a day for its time (fast-forwarded), then paces"),
    "batch-dynamic-policy-canceled": Scenario(
        "adds a device that matches later; its policy canceled; drained, canceled"
    ),
    "verify-passed": Scenario("a verification on two devices, both updated: verified"),
    "batch-dynamic-nudged": Scenario(
        "polls hourly; a device reports a source version: the bridge's `devices_arrived`, "
        "synced at once, pushed; policy canceled, drained",
        NUDGE_RELEASE,
    ),
    "batch-paused-run1": Scenario(
        "rate 12/min, `pause` after the first push: paused, continued as new", ROLLOUT_RELEASE
    ),
    "batch-resumed-last": Scenario(
        "that batch's next run: `resume`, the other two pushed, completed", ROLLOUT_RELEASE
    ),
    "batch-stop-paused": Scenario(
        "stop rule 50% after 2: two failures pause it before the third push", ROLLOUT_RELEASE
    ),
    "batch-phase-gate-run1": Scenario(
        "phases 50%, manual: the first device, then the gate (continued as new)", ROLLOUT_RELEASE
    ),
    "batch-phase-promoted": Scenario(
        "that batch's next run: waits at the gate, `promote`, the second device", ROLLOUT_RELEASE
    ),
    "batch-phase-auto-promoted": Scenario(
        "phases 50%, promote_at 100: the gate opens once the first device updated",
        ROLLOUT_RELEASE,
    ),
    "batch-window-waited": Scenario(
        "a window 3 h ahead: held (fast-forwarded to its opening), then pushed", ROLLOUT_RELEASE
    ),
    "batch-ramp": Scenario(
        "ramp 12/min x5 every updated device, up to 60: the rate rose", ROLLOUT_RELEASE
    ),
    "batch-capped": Scenario("max_in_flight 1: one device at a time", ROLLOUT_RELEASE),
    "device-pickup-timeout": Scenario(
        "silent for its 5-minute pickup timeout, no retry: failed, no_response", ROLLOUT_RELEASE
    ),
}


def expected_in(release: str) -> set[str]:
    """The scenario files a release directory must hold. Names sort by date, and a release
    recorded again the same day adds a suffix: release-2026-11-30 < release-2026-11-30-rollout."""
    return {name for name, s in SCENARIOS.items() if s.since <= release}


@dataclass
class Recording:
    env: WorkflowEnvironment
    out: Path
    home: Path
    saved: list[str]

    def context(self, name: str, **settings: Any) -> Context:
        """A database and task queue of its own, so one group's rows never meet another's."""
        home = self.home / name
        home.mkdir()
        return make_context(home, MQTT_URL, self.env.client, batch_poll_seconds=0.5, **settings)

    async def start_batch(self, ctx: Context, **batch: Any) -> tuple[str, WorkflowHandle]:
        """In real time, until the scenario moves a clock (the children inherit it)."""
        with self.env.with_time_skipping_disabled():
            b = await create_batch(ctx, BatchInput("", src_versions=["1.0.0"], **batch))
        return b["id"], self.env.client.get_workflow_handle(batch_workflow_id(b["id"]))

    async def save(self, name: str, handle: WorkflowHandle, run_id: str | None = None) -> None:
        assert name in SCENARIOS, name
        if run_id:
            handle = self.env.client.get_workflow_handle(handle.id, run_id=run_id)
        history = await handle.fetch_history()
        (self.out / f"{name}.json").write_text(history.to_json())
        self.saved.append(name)
        print(f"{name}: {len(history.events)} events")


async def first_run_id(handle: WorkflowHandle) -> str:
    return (await handle.describe()).raw_description.workflow_execution_info.first_run_id


async def has_event(handle: WorkflowHandle, attribute: str, count: int = 1) -> bool:
    """True once the current run's history holds `count` events with that attribute."""
    seen = 0
    async for event in handle.fetch_history_events():
        seen += event.HasField(attribute)  # type: ignore[arg-type]
    return seen >= count


def until(check: Callable[[], Any], timeout: float = 60.0) -> Awaitable[Any]:
    return eventually(check, timeout=timeout)


async def static_batch(rec: Recording) -> None:
    """One unpaced batch (timeout 30 min, retry after 10 min, once) whose devices each take one
    path: happy, offline then online, a failure then the retry, a reconnect while pushed."""
    ctx = rec.context("static")
    pk = "rel-s"
    make_fleet(ctx.engine, 1, product_key=pk, prefix="happy-")
    make_fleet(ctx.engine, 1, product_key=pk, prefix="offline-", online=False)
    make_fleet(ctx.engine, 1, product_key=pk, prefix="retry-")
    make_fleet(ctx.engine, 1, product_key=pk, prefix="repush-")
    happy, offline, retry, repush = "happy-00000", "offline-00000", "retry-00000", "repush-00000"
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(client, ctx):
        b, handle = await rec.start_batch(
            ctx, firmware_id=fw, timeout_minutes=30, retry_interval_minutes=10, max_retries=1
        )

        def pushed_to(name: str) -> int:
            return sum(n == name for n, _ in pushes)

        await until(lambda: {happy, retry, repush} <= {n for n, _ in pushes})
        await until(lambda: tasks_of(ctx.engine, b)[offline].reason == "offline")
        await bridge.updated(happy)

        await bridge.online(offline)
        await until(lambda: pushed_to(offline) == 1)
        await bridge.updated(offline)

        await bridge.online(repush)
        await until(lambda: pushed_to(repush) == 2)  # the recheck: recorded nowhere
        await bridge.updated(repush)

        await bridge.failed(retry, "download_failed")
        device = bridge.handle(retry)
        # The retry interval's timer must exist before its clock moves past it.
        await until(lambda: has_event(device, "timer_started_event_attributes", 2))
        assert await rec.env.fast_forward(device, timedelta(minutes=11))
        await until(lambda: attempts_of(ctx.engine, b, retry) == 2 and pushed_to(retry) == 2)
        await bridge.updated(retry)

        result = await handle.result()
        assert result["counts"] == {"updated": 4}, result
        assert (await device.result())["attempts"] == 2
    await rec.save("batch-static", handle)
    await rec.save("device-happy", bridge.handle(happy))
    await rec.save("device-offline-online", bridge.handle(offline))
    await rec.save("device-retry", device)
    await rec.save("device-repush-on-reconnect", bridge.handle(repush))


async def timeouts(rec: Recording) -> None:
    """Two devices make progress and go quiet past their 30 minutes: one stays silent through
    the last look, the other answers it."""
    ctx = rec.context("timeout")
    pk = "rel-t"
    _, (silent, answers) = make_fleet(ctx.engine, 2, product_key=pk, prefix="t-")
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, timeout_minutes=30)
        await until(lambda: set(states_of(ctx.engine, b).values()) == {"pushed"})
        for name in (silent, answers):
            device = bridge.handle(name)
            # A minute before the device's virtual now: the 30-minute timer then finds the
            # deadline passed at once (no second, shorter timer), the same on every recording.
            at = await rec.env.get_current_time(device) - timedelta(minutes=1)
            with session_scope(ctx.engine) as session:  # the bridge's first-progress write
                session.exec(
                    update(Task)
                    .where(col(Task.batch_id) == b, col(Task.device_name) == name)
                    .values(state="in_upgrade", first_progress_at=at, progress=5)
                )
            assert await rec.env.fast_forward(device, timedelta(minutes=31))
        await until(lambda: len(pushes) == 4)  # both asked once more
        await bridge.updated(answers)
        assert await rec.env.fast_forward(bridge.handle(silent), timedelta(minutes=3)) is False
        silent_result = await bridge.handle(silent).result()
        assert (silent_result["state"], silent_result["reason"]) == ("failed", "timeout")
        assert (await bridge.handle(answers).result())["state"] == "updated"
        await handle.result()
    await rec.save("device-timeout", bridge.handle(silent))
    await rec.save("device-timeout-answered", bridge.handle(answers))


async def cancel_all(rec: Recording) -> None:
    ctx = rec.context("cancel")
    pk = "rel-c"
    make_fleet(ctx.engine, 1, product_key=pk, prefix="pushed-")
    make_fleet(ctx.engine, 1, product_key=pk, prefix="offline-", online=False)
    pushed, offline = "pushed-00000", "offline-00000"
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw)
        await until(
            lambda: (
                states_of(ctx.engine, b) == {pushed: "pushed", offline: "to_be_pushed"}
                and tasks_of(ctx.engine, b)[offline].reason == "offline"
            )
        )
        await cancel_batch(ctx, b, all_tasks=True)
        result = await handle.result()
        assert (result["state"], result["counts"]) == ("canceled", {"canceled": 2}), result
        for name in (pushed, offline):
            assert (await bridge.handle(name).result())["state"] == "canceled"
    await rec.save("batch-cancel-all", handle)
    await rec.save("device-cancel-pushed", bridge.handle(pushed))
    await rec.save("device-cancel-offline", bridge.handle(offline))


async def continued_pacer(rec: Recording) -> None:
    """Five devices, two starts a run: three runs; the first and the last are kept."""
    ctx = rec.context("continued", continue_as_new_every=2)
    pk = "rel-n"
    _, names = make_fleet(ctx.engine, 5, product_key=pk, prefix="n-")
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw)
        await until(lambda: set(states_of(ctx.engine, b).values()) == {"pushed"})
        assert len(states_of(ctx.engine, b)) == 5
        for name in names:
            await bridge.updated(name)
        result = await handle.result()
        assert result["counts"] == {"updated": 5}, result
    first = await first_run_id(handle)
    await rec.save("batch-continued-run1", handle, run_id=first)
    await rec.save("batch-continued-last", handle)


async def paced_turns(rec: Recording) -> None:
    """An offline fleet comes back in one flush of the bridge (apply_reports, then its
    Signaller): the pacer lets the devices push two at a time (24 a minute, bursts of 2)."""
    ctx = rec.context("paced")
    pk = "rel-p"
    _, names = make_fleet(ctx.engine, 3, product_key=pk, prefix="p-", online=False)
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(MQTT_URL, pk) as pushes, running_worker(client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, rate_per_minute=24)
        await until(
            lambda: (
                len(tasks_of(ctx.engine, b)) == 3
                and all(
                    t.reason == "offline" and t.started for t in tasks_of(ctx.engine, b).values()
                )
            )
        )
        flush = apply_reports(ctx.engine, [protocol.Status(pk, n, True) for n in names])
        assert [s.workflow_id for s in flush.signals] == [batch_workflow_id(b)]
        await Signaller(client, Counter()).send(flush.signals)
        await until(lambda: sorted(n for n, _ in pushes) == names)
        for name in names:
            await bridge.updated(name)
        result = await handle.result()
        assert result["counts"] == {"updated": 3}, result
    await rec.save("batch-paced-turns", handle)
    await rec.save("device-paced-turn", bridge.handle(names[0]))


async def scheduled(rec: Recording) -> None:
    """`ota batch create --at` a day ahead (the service allows 5 minutes to 7 days), paced at 12
    a minute: the schedule's timer is fast-forwarded, the pacing runs in real time."""
    ctx = rec.context("scheduled")
    pk = "rel-w"
    _, names = make_fleet(ctx.engine, 2, product_key=pk, prefix="w-")
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    at = datetime.now(UTC) + timedelta(days=1)
    async with running_worker(client, ctx):
        b, handle = await rec.start_batch(
            ctx, firmware_id=fw, scheduled_at=at.isoformat(), rate_per_minute=12
        )
        await until(lambda: has_event(handle, "timer_started_event_attributes"))
        assert set(states_of(ctx.engine, b).values()) == {"to_be_pushed"}
        assert await rec.env.fast_forward(handle, timedelta(days=1, minutes=1))
        await until(lambda: set(states_of(ctx.engine, b).values()) == {"pushed"})
        for name in names:
            await bridge.updated(name)
        result = await handle.result()
        assert result["counts"] == {"updated": 2}, result
    await rec.save("batch-scheduled", handle)


async def dynamic(rec: Recording) -> None:
    ctx = rec.context("dynamic", dynamic_poll_seconds=1.0)
    pk = "rel-d"
    _, (first,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="d-")
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, policy="dynamic")
        await until(lambda: states_of(ctx.engine, b) == {first: "pushed"})
        _, (later,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="later-")
        await until(lambda: states_of(ctx.engine, b).get(later) == "pushed")
        await cancel_batch(ctx, b)  # the default scope: the policy only
        await until(lambda: batch_row(ctx.engine, b).state == "canceled")
        for name in (first, later):
            await bridge.updated(name)
        result = await handle.result()
        assert (result["state"], result["counts"]) == ("canceled", {"updated": 2}), result
    await rec.save("batch-dynamic-policy-canceled", handle)


async def dynamic_nudged(rec: Recording) -> None:
    """A dynamic batch that polls hourly: a device reporting a source version in a flush of the
    bridge (apply_reports with its view of the dynamic batches, then its Signaller) is picked
    up within seconds."""
    ctx = rec.context("dynamic-nudged", dynamic_poll_seconds=3600.0)
    pk = "rel-n"
    _, (first,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="n-")
    _, (later,) = make_fleet(ctx.engine, 1, version="0.9.0", product_key=pk, prefix="later-")
    fw = make_firmware(ctx.engine, pk)
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        b, handle = await rec.start_batch(ctx, firmware_id=fw, policy="dynamic")
        await until(lambda: states_of(ctx.engine, b) == {first: "pushed"})
        report = protocol.Inform(pk, later, "1", "1.0.0")
        flush = apply_reports(ctx.engine, [report], dynamic=DynamicBatches())
        assert [s.workflow_id for s in flush.signals] == [batch_workflow_id(b)]
        await Signaller(client, Counter()).send(flush.signals)
        await until(lambda: states_of(ctx.engine, b).get(later) == "pushed", timeout=20)
        await cancel_batch(ctx, b)  # the policy only
        await until(lambda: batch_row(ctx.engine, b).state == "canceled")
        for name in (first, later):
            await bridge.updated(name)
        result = await handle.result()
        assert (result["state"], result["counts"]) == ("canceled", {"updated": 2}), result
    await rec.save("batch-dynamic-nudged", handle)


async def verification(rec: Recording) -> None:
    ctx = rec.context("verify")
    pk = "rel-v"
    _, names = make_fleet(ctx.engine, 2, product_key=pk, prefix="v-")
    fw = make_firmware(ctx.engine, pk, version="3.0.0", state="unverified")
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx):
        with rec.env.with_time_skipping_disabled():
            shown = await start_verify(ctx, fw, names, timeout=30)
        await until(lambda: set(states_of(ctx.engine, shown["id"]).values()) == {"pushed"})
        for name in names:
            await bridge.updated(name)
        assert (await wait_verify(ctx, shown["id"]))["firmware_state"] == "verified"
    await rec.save("verify-passed", client.get_workflow_handle(verify_workflow_id(shown["id"])))


async def continued_device(rec: Recording) -> None:
    """An offline device whose 6-hour re-check finds it still offline on a server that suggests
    continue-as-new: the run continues as new; the next one pushes on `online`. Started with
    the client as a batch would start it (the pacer's own history would continue too)."""
    ctx = rec.context("device-continued")
    pk = "rel-o"
    _, (name,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="o-", online=False)
    batch_id = make_task(ctx.engine, pk, name, state="to_be_pushed")
    with Session(ctx.engine) as session:
        task_id = session.exec(select(Task.id).where(Task.batch_id == batch_id)).one()
    client = rec.env.client
    bridge = FakeBridge(ctx.engine, client, pk)
    handle = bridge.handle(name)
    async with running_worker(client, ctx):
        with rec.env.with_time_skipping_disabled():
            await client.start_workflow(
                DEVICE_WORKFLOW,
                DeviceUpgradeInput(batch_id, task_id, pk, name, timeout_minutes=30),
                id=handle.id,
                task_queue=ctx.settings.task_queue,
            )
        await until(lambda: tasks_of(ctx.engine, batch_id)[name].reason == "offline")
        first = await first_run_id(handle)
        await until(lambda: has_event(handle, "timer_started_event_attributes"))
        await rec.env.fast_forward(handle, timedelta(hours=6, minutes=1))
        await until(lambda: _has_later_run(handle, first))
        await until(lambda: has_event(handle, "timer_started_event_attributes"))
        await bridge.online(name)
        await until(lambda: tasks_of(ctx.engine, batch_id)[name].state == "pushed")
        await bridge.updated(name)
        assert (await handle.result())["state"] == "updated"
    await rec.save("device-continued-run1", handle, run_id=first)
    await rec.save("device-continued-run2", handle)


async def _has_later_run(handle: WorkflowHandle, first: str) -> bool:
    return (await handle.describe()).run_id != first


async def server(**extra: str) -> WorkflowEnvironment:
    args = list(DEV_SERVER_ARGS)
    for key, value in extra.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    return await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=args,
        search_attributes=list(SEARCH_ATTRIBUTES),
        ui=False,
    )


async def record(out: Path, home: Path) -> list[str]:
    # Imported here: record_rollout builds its groups on this module's Recording.
    from tests.histories.record_rollout import GROUPS as ROLLOUT_GROUPS

    saved: list[str] = []
    env = await server()
    try:
        rec = Recording(env, out, home, saved)
        for group in (
            static_batch,
            timeouts,
            cancel_all,
            continued_pacer,
            paced_turns,
            scheduled,
            dynamic,
            dynamic_nudged,
            verification,
            *ROLLOUT_GROUPS,
        ):
            await group(rec)
    finally:
        await env.shutdown()
    env = await server(
        **{"limit.historyCount.suggestContinueAsNew": str(SUGGEST_CONTINUE_AFTER_EVENTS)}
    )
    try:
        await continued_device(Recording(env, out, home, saved))
    finally:
        await env.shutdown()
    return saved


async def main() -> None:
    if len(sys.argv) > 2:
        sys.exit("usage: python -m tests.histories.record_release [OUT_DIR]")
    out = (
        Path(sys.argv[1]) if len(sys.argv) == 2 else HERE / f"release-{datetime.now(UTC):%Y-%m-%d}"
    )
    out.mkdir(parents=True, exist_ok=False)  # a release's histories are a contract: never redo
    with tempfile.TemporaryDirectory() as home:
        saved = await record(out, Path(home))
    missing = set(SCENARIOS) - set(saved)  # today's recorder records every scenario
    assert not missing, f"not recorded: {sorted(missing)}"
    print(f"{len(saved)} histories in {out}")


if __name__ == "__main__":
    asyncio.run(main())
