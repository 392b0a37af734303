"""What the benchmark reads off a batch: timings from the database, events from Temporal."""

from __future__ import annotations

import random
import statistics
import urllib.request
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import Client

from ota.contracts import device_workflow_id
from ota.db.models import Task

HISTORY_SAMPLE = 40


def task_times(engine: Engine, batch_id: str) -> list[tuple[datetime, datetime | None]]:
    """(pushed_at, finished_at) of every task that was pushed."""
    with Session(engine) as s:
        rows = s.exec(
            select(Task.pushed_at, Task.finished_at).where(
                Task.batch_id == batch_id,
                Task.pushed_at.is_not(None),  # type: ignore[union-attr]
            )
        ).all()
    return [(p, f) for p, f in rows if p is not None]


def push_to_updated(times: list[tuple[datetime, datetime | None]]) -> dict[str, float]:
    spans = sorted((f - p).total_seconds() for p, f in times if f is not None)
    if not spans:
        return {"p50_s": 0.0, "p99_s": 0.0}
    return {
        "p50_s": statistics.median(spans),
        "p99_s": spans[min(len(spans) - 1, int(len(spans) * 0.99))],
    }


def pacing(times: list[tuple[datetime, datetime | None]], rate: int) -> dict[str, float]:
    """Pushes per minute overall, the most in any 60 s window, and the error against `rate`."""
    pushes = sorted(p for p, _ in times)
    if len(pushes) < 2:
        return {"pushes_per_min": 0.0, "max_in_any_minute": len(pushes), "error": 1.0}
    span = (pushes[-1] - pushes[0]).total_seconds()
    # n pushes at a steady rate take (n - 1) intervals.
    per_min = (len(pushes) - 1) / span * 60 if span else float("inf")
    most, j = 0, 0
    for i, t in enumerate(pushes):
        while pushes[j] < t - timedelta(seconds=60):
            j += 1
        most = max(most, i - j + 1)
    return {
        "pushes_per_min": per_min,
        "max_in_any_minute": most,
        "error": abs(per_min - rate) / rate,
    }


def updated_per_min(times: list[tuple[datetime, datetime | None]]) -> float:
    done = sorted(f for _, f in times if f is not None)
    if len(done) < 2:
        return 0.0
    return (len(done) - 1) / (done[-1] - done[0]).total_seconds() * 60


async def device_histories(
    client: Client, product_key: str, device_names: list[str]
) -> dict[str, float]:
    """Events and signals per device workflow, from a sample of their histories."""
    sample = random.sample(device_names, min(HISTORY_SAMPLE, len(device_names)))
    events, signals, tasks = [], [], []
    for name in sample:
        history = await client.get_workflow_handle(
            device_workflow_id(product_key, name)
        ).fetch_history()
        kinds = [e.event_type for e in history.events]
        events.append(len(kinds))
        signals.append(sum(1 for k in kinds if k == 26))  # WORKFLOW_EXECUTION_SIGNALED
        tasks.append(sum(1 for k in kinds if k == 7))  # WORKFLOW_TASK_COMPLETED
    return {
        "events_per_device": statistics.mean(events),
        "signals_per_device": statistics.mean(signals),
        "workflow_tasks_per_device": statistics.mean(tasks),
        "max_device_history_events": max(events),
    }


async def batch_run_lengths(client: Client, workflow_id: str) -> list[int]:
    """History length of every run of a workflow (the pacer continues as new)."""
    lengths = []
    async for wf in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        history = await client.get_workflow_handle(workflow_id, run_id=wf.run_id).fetch_history()
        lengths.append(len(history.events))
    return lengths


def persistence_requests(metrics_port: int) -> dict[str, float]:
    """The dev server's database operations so far, by operation (Prometheus endpoint)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    except OSError:
        return {}
    counts: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith("persistence_requests{"):
            labels, value = line.rsplit(" ", 1)
            op = labels.split('operation="', 1)[1].split('"', 1)[0]
            counts[op] = counts.get(op, 0.0) + float(value)
    return counts


def ops_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {op: n - before.get(op, 0.0) for op, n in after.items() if n - before.get(op, 0.0)}
