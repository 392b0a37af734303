"""What must hold after a fault run, whatever was killed when: the invariants of issue 17.

Each check returns the violations it found, one line each, naming the device or workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aiomqtt
from sqlalchemy import Engine, text
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from activities.push import ASKED_AGAIN
from ota.domain import ACTIVE_TASK_STATES, DEFAULT_MODULE

log = logging.getLogger("bench.faults")
MAX_HISTORY_EVENTS = 10_000
RUNNING_GRACE_SECONDS = 10.0
CLOSING_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}
SLACK_SECONDS = 3.0
RECONCILE_LINE = re.compile(r"pushing (\d+) tasks in flight again")
ASKED_AGAIN_LINE = re.compile(re.escape(ASKED_AGAIN) + r": [^/\s]+/(\S+) asked again")


class PushCounter:
    """Counts the upgrade pushes each device is sent, by listening like the devices do.

    Its session is persistent (QoS 1) so pushes sent while it reconnects after a broker restart
    still reach it when the broker kept them; a message delivered twice (QoS 1 allows it) is
    counted once, by its id. Pushes lost with a killed broker are not counted: the count may be
    low, never high, so it can only prove a device was pushed too often."""

    def __init__(self, host: str, port: int, product_key: str) -> None:
        self.host, self.port, self.product_key = host, port, product_key
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.first_at: dict[str, float] = {}  # when each device's first push was seen
        self.ready = asyncio.Event()
        self.client_id = f"faults-pushcount-{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, clean_session=False
                ) as client:
                    await client.subscribe(f"/ota/device/upgrade/{self.product_key}/+", qos=1)
                    self.ready.set()
                    async for msg in client.messages:
                        device = str(msg.topic).rsplit("/", 1)[1]
                        self.seen[device].add(_message_id(msg.payload))
                        self.first_at.setdefault(device, time.time())
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)

    def pushes(self) -> Counter[str]:
        return Counter({device: len(ids) for device, ids in self.seen.items()})


def _message_id(payload: object) -> str:
    raw = payload if isinstance(payload, bytes | str) else b""
    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(raw)["id"])
    return str(hash(raw))


def reconcile_passes(bridge_log: Path) -> list[float]:
    """When each pass the bridge started (over all its restarts) read the tasks in flight, as
    Unix times: a pass pushes each of them once."""
    if not bridge_log.exists():
        return []
    times = []
    for line in bridge_log.read_text(errors="replace").splitlines():
        if RECONCILE_LINE.search(line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # the log's local time
            times.append(stamp.timestamp())
    return times


def asked_again(worker_log: Path) -> Counter[str]:
    """Device name -> the pushes its workflow sent again, recorded nowhere (a reconnect on the
    old version, the last look before a timeout): reconciliation of one device."""
    found: Counter[str] = Counter()
    if worker_log.exists():
        for line in worker_log.read_text(errors="replace").splitlines():
            if m := ASKED_AGAIN_LINE.search(line):
                found[m.group(1)] += 1
    return found


def passes_in_flight(
    passes: list[float], first_push: float | None, final_at: datetime | None
) -> int:
    """The passes that could have pushed a device: those while its task was in flight, from a
    little before its first push was seen (the push is recorded before it is published) to
    its final state (a few seconds' slack either side)."""
    if first_push is None:
        return 0
    end = final_at.timestamp() if final_at is not None else float("inf")
    return sum(1 for p in passes if first_push - SLACK_SECONDS <= p <= end + SLACK_SECONDS)


def read_fleet_state(path: Path) -> dict[str, str]:
    """Device name -> the version the simulated device runs (its own view: the truth)."""
    files = [path] if path.exists() else sorted(path.parent.glob(path.name + ".*[0-9]"))
    state: dict[str, str] = {}
    for f in files:
        for name, versions in json.loads(f.read_text()).items():
            state[name] = versions.get(DEFAULT_MODULE, "")
    return state


def task_rows(engine: Engine, batch_id: str) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.device_name, t.state, t.reason, t.attempts, t.target_version, "
                "t.updated_at, "
                "t.from_version, m.version AS recorded FROM tasks t "
                "LEFT JOIN device_modules m ON m.device_id = t.device_id AND m.module = :module "
                "WHERE t.batch_id = :batch"
            ),
            {"batch": batch_id, "module": DEFAULT_MODULE},
        ).mappings()
        return {r["device_name"]: dict(r) for r in rows}


def batch_state(engine: Engine, batch_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT state FROM batches WHERE id = :b"), {"b": batch_id}
        ).scalar()


def check_tasks(
    tasks: dict[str, dict[str, object]],
    truth: dict[str, str],
    pushes: Counter[str],
    first_push: dict[str, float],
    passes: list[float],
    devices: int,
    again: Counter[str] | None = None,
) -> list[str]:
    """Every task final and agreeing with what its device runs; the platform's recorded version
    too; no device pushed more often than its attempts plus one push per reconciliation pass
    while its task was in flight."""
    out: list[str] = []
    if len(tasks) != devices:
        out.append(f"batch has {len(tasks)} tasks for {devices} devices")
    if not truth:
        out.append("the fleet wrote no state file: the devices' versions are unknown")
    for name, t in sorted(tasks.items()):
        runs = truth.get(name)
        state, target = t["state"], t["target_version"]
        where = f"{name}: task {state}" + (f" ({t['reason']})" if t["reason"] else "")
        if state in ACTIVE_TASK_STATES:
            out.append(f"{where} is still active")
        if truth and runs is None:
            out.append(f"{where}: the fleet does not know this device")
        elif truth and (state == "updated") != (runs == target):
            out.append(f"{where} but the device runs {runs} (target {target})")
        if truth and runs is not None and t["recorded"] != runs:
            out.append(f"{name}: the platform records {t['recorded']}, the device runs {runs}")
        attempts = int(t["attempts"] or 0)  # type: ignore[call-overload]
        final_at = t["updated_at"] if state not in ACTIVE_TASK_STATES else None
        allowed = passes_in_flight(passes, first_push.get(name), final_at)  # type: ignore[arg-type]
        asked = (again or Counter())[name]
        if pushes[name] > attempts + allowed + asked:
            out.append(
                f"{name}: pushed {pushes[name]} times for {attempts} attempts, "
                f"{allowed} reconciliation passes while in flight and {asked} asked again"
            )
    return out


async def check_histories(
    client: Client, task_states: dict[str, str]
) -> tuple[list[str], dict[str, int]]:
    """Every run of every workflow on the run's own server: under 10,000 events, closed, and no
    workflow task failed without a later one completing. Returns violations and the failed
    workflow tasks seen, by cause (a recovered one is not a violation, but worth a look).
    `task_states`: device workflow id -> its task's state, to say why one still runs.

    A run seen running is looked at again after `RUNNING_GRACE_SECONDS`: the listing lags, and
    a workflow that just recorded its last state may be a workflow task from closing (seen: a
    batch whose completion raced a child's, UnhandledCommand, then closed a second later)."""
    out: list[str] = []
    causes: Counter[str] = Counter()
    running = []
    async for wf in client.list_workflows(""):
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        events = (await handle.fetch_history()).events
        if len(events) >= MAX_HISTORY_EVENTS:
            out.append(f"workflow {wf.id} run {wf.run_id[:8]}: {len(events)} events")
        for e in events:
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                causes[_enum_name(e.workflow_task_failed_event_attributes.cause)] += 1
        if not _closed(events):
            running.append(handle)
    if running:
        await asyncio.sleep(RUNNING_GRACE_SECONDS)
    for handle in running:
        events = (await handle.fetch_history()).events
        if _closed(events):
            continue
        where = f"workflow {handle.id} run {(handle.run_id or '')[:8]}"
        if failed := _last_task_failed(events):
            out.append(f"{where}: its last workflow task failed ({failed[:200]})")
        state = task_states.get(handle.id)
        why = f" although its task is {state}: a lost signal" if state else ""
        out.append(f"{where} is still running{why}")
    return out, dict(causes)


def _closed(events: Sequence[HistoryEvent]) -> bool:
    return bool(events) and events[-1].event_type in CLOSING_EVENTS


def _last_task_failed(events: Sequence[HistoryEvent]) -> str | None:
    """A failed workflow task with none completed after it: the workflow cannot move on."""
    failed = None
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = e.workflow_task_failed_event_attributes
            failed = f"{_enum_name(attrs.cause)}: {attrs.failure.message}"
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            failed = None
    return failed


def _enum_name(cause: WorkflowTaskFailedCause.ValueType) -> str:
    return WorkflowTaskFailedCause.Name(cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
