"""A dynamic batch picking up a fleet as it comes online: the bridge's nudge at work.

    python -m bench.dynamic --devices 1000 [--rate 1000] [--connect-rate 20] [--poll 60]

Starts a clean stack (Temporal dev server, an anonymous Mosquitto of its own, `ota worker`,
`ota bridge`, `ota api`), registers N devices that have reported nothing yet, and creates a
dynamic batch from 1.0.0 (`--rate`, default unthrottled). Then `ota simulate` brings the N
devices online on 1.0.0 at `--connect-rate` a second. Each device's first report (its inform)
and first push are seen on the broker, so the pickup latency is report -> push; the batch's
`--poll` (the safety net, default 60 s) is long enough that the nudges do the picking up.
Prints and writes (--out) the latency, the pushes per minute achieved, and what the nudges
cost the batch's workflow: `devices_arrived` signals and pacer events per device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
from sqlmodel import Session
from temporalio.client import Client, WorkflowHistory

# The bench's own stack helpers (one run of `python -m bench` sets up the same way).
from bench.run import _answers_ok, _context, _firmware, _settings, _until, new_workdir
from bench.stack import BenchStack
from ota.context import Context
from ota.contracts import SIGNAL_DEVICES_ARRIVED, BatchInput, batch_workflow_id
from ota.db.models import Batch
from ota.device.simulator import device_name
from ota.devstack import free_port
from ota.protocol import inform_topic, upgrade_topic
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from ota.services.devices import register_fleet

log = logging.getLogger("bench.dynamic")
DEVICES_PER_SIM_PROCESS = 500
# History event types.
TASK_SCHEDULED, TASK_STARTED, TASK_COMPLETED, START_CHILD, SIGNALED = 5, 6, 7, 29, 26


class BrokerWatch:
    """When each device first reported (inform) and was first pushed, seen on the broker."""

    def __init__(self, mqtt_url: str, pk: str) -> None:
        self.host, port = mqtt_url.rsplit("//", 1)[-1].split(":")
        self.port, self.pk = int(port), pk
        self.reported: dict[str, float] = {}
        self.pushed: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def _run(self) -> None:
        async with aiomqtt.Client(self.host, self.port, max_queued_incoming_messages=0) as sub:
            await sub.subscribe(inform_topic(self.pk, "+"), qos=0)
            await sub.subscribe(upgrade_topic(self.pk, "+"), qos=0)
            self.ready.set()
            async for msg in sub.messages:
                seen = time.time()
                kind, name = str(msg.topic).split("/")[3], str(msg.topic).rsplit("/", 1)[-1]
                times = self.reported if kind == "inform" else self.pushed
                times.setdefault(name, seen)

    async def __aenter__(self) -> BrokerWatch:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def run(devices: int, rate: int | None, connect_rate: float, poll: float) -> dict[str, Any]:
    workdir = new_workdir()
    stack = BenchStack(workdir)
    try:
        stack.start_temporal()
        stack.env["OTA_BROKER_AUTH"] = "none"  # the broker's auth is not what this measures
        stack.env["OTA_DYNAMIC_POLL_SECONDS"] = str(poll)
        mqtt_url = stack.start_mosquitto(_settings(stack))
        ctx = _context(stack, workdir, mqtt_url)
        bridge_port = free_port()
        stack.env["OTA_BRIDGE_METRICS_PORT"] = str(bridge_port)
        for name in ("worker", "bridge", "api"):
            stack.start(name, [sys.executable, "-m", "starter", name])
        ready = f"http://127.0.0.1:{bridge_port}/readyz"
        await _until(lambda: _answers_ok(ready), 60, "bridge ready")
        pk = f"dyn{uuid.uuid4().hex[:6]}"
        names = [device_name("sim-", i) for i in range(devices)]
        register_fleet(ctx.engine, ctx.settings, pk, names)  # no version reported yet
        fw = _firmware(ctx, pk, "2.0.0")
        batch = await create_batch(
            ctx,
            BatchInput(batch_id="", firmware_id=fw, policy="dynamic", src_versions=["1.0.0"],
                       rate_per_minute=rate, timeout_minutes=60),
        )  # fmt: skip
        batch_id = batch["id"]
        await _until(lambda: _prepared(ctx, batch_id), 60, "batch prepared")
        async with BrokerWatch(mqtt_url, pk) as watch:
            stack.start(
                "simulator",
                [sys.executable, "-m", "starter", "simulate", "--product", pk,
                 "--devices", str(devices), "--version", "1.0.0", "--install-seconds", "0",
                 "--processes", str(max(1, -(-devices // DEVICES_PER_SIM_PROCESS))),
                 "--connect-rate", str(connect_rate), "--mqtt-protocol", "3.1.1"],
            )  # fmt: skip
            patience = 120 + devices / connect_rate + (devices / rate * 60 if rate else 0)
            await _until(lambda: len(watch.pushed) >= devices, patience, "every device pushed")
        await cancel_batch(ctx, batch_id)  # the policy: the pacer ends once its devices are done
        client = await ctx.temporal()
        result = {
            "devices": devices,
            "rate_per_minute": rate,
            "connect_rate_per_s": connect_rate,
            "dynamic_poll_seconds": poll,
            **_pickup(watch, rate),
            **await _pacer_costs(client, batch_workflow_id(batch_id), devices, workdir),
            "workdir": str(workdir),
        }
        return result
    finally:
        stack.stop()


def _prepared(ctx: Context, batch_id: str) -> bool:
    with Session(ctx.engine) as session:
        batch = session.get(Batch, batch_id)
        return batch is not None and batch.prepared_at is not None


def _pickup(watch: BrokerWatch, rate: int | None) -> dict[str, Any]:
    """Report -> push per device, how fast the devices came online, and the pushes' rate."""
    waits = sorted(watch.pushed[n] - watch.reported[n] for n in watch.pushed if n in watch.reported)
    online = sorted(watch.reported.values())
    pushes = sorted(watch.pushed.values())

    def pct(p: float) -> float:
        return round(waits[min(len(waits) - 1, int(p * len(waits)))], 3)

    span = pushes[-1] - pushes[0]
    most = most_in_60s(pushes)
    return {
        "pickup_seconds": {
            "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": round(waits[-1], 3),
            "mean": round(statistics.mean(waits), 3),
        },
        "online_per_s": round((len(online) - 1) / (online[-1] - online[0]), 1),
        "online_seconds": round(online[-1] - online[0], 1),
        "pushes_per_min": round((len(pushes) - 1) / span * 60, 1) if span else None,
        "most_pushes_in_60s": most,
        "rate_error": round(most / rate - 1, 4) if rate else None,
        "first_report_to_last_push_seconds": round(pushes[-1] - online[0], 1),
    }  # fmt: skip


def most_in_60s(times: list[float]) -> int:
    """The most of these (sorted) times in any 60 s window."""
    most, j = 0, 0
    for i, at in enumerate(times):
        while times[j] <= at - 60:
            j += 1
        most = max(most, i - j + 1)
    return most


def start_times(history: WorkflowHistory) -> list[float]:
    """When the pacer started each device workflow, in workflow time (its workflow task's)."""
    times, now = [], 0.0
    for e in history.events:
        if e.event_type == TASK_STARTED:
            now = e.event_time.ToDatetime().timestamp()
        elif e.event_type == START_CHILD:
            times.append(now)
    return times


async def _pacer_costs(
    client: Client, workflow_id: str, devices: int, workdir: Path
) -> dict[str, Any]:
    """The batch workflow's runs: events, workflow tasks and `devices_arrived` signals (each
    run's history is kept in the workdir)."""
    events = tasks = nudges = woken = runs = 0
    starts: list[float] = []
    async for wf in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        handle = client.get_workflow_handle(workflow_id, run_id=wf.run_id)
        history = await handle.fetch_history()
        runs += 1
        (workdir / f"pacer-run{runs}.json").write_text(history.to_json())
        starts += start_times(history)
        events += len(history.events)
        tasks += sum(e.event_type == TASK_COMPLETED for e in history.events)
        for e, after in zip(history.events, history.events[1:], strict=False):
            attrs = e.workflow_execution_signaled_event_attributes
            if e.event_type == SIGNALED and attrs.signal_name == SIGNAL_DEVICES_ARRIVED:
                nudges += 1
                # The nudge found the pacer idle: a workflow task of its own (3 events).
                woken += after.event_type == TASK_SCHEDULED
    return {
        "pacer_runs": runs,
        "nudges": nudges,
        "nudges_per_device": round(nudges / devices, 4),
        # Events a nudge adds: its signal, and the workflow task it wakes an idle pacer with.
        "nudge_events_per_device": round((nudges + 3 * woken) / devices, 3),
        # The rate as the pacer keeps it: starts by workflow time (pushes follow each start by
        # a varying delay, seconds on a loaded machine, so a 60 s window of pushes may hold more).
        "most_starts_in_60s": most_in_60s(sorted(starts)),
        "pacer_events_per_device": round(events / devices, 3),
        "pacer_workflow_tasks_per_device": round(tasks / devices, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dynamic", description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=int, help="the batch's rate per minute; default: none")
    parser.add_argument(
        "--connect-rate", type=float, default=20.0, help="devices coming online per second"
    )
    parser.add_argument(
        "--poll", type=float, default=60.0, help="the batch's dynamic poll (the safety net), s"
    )
    parser.add_argument("--out", type=Path, help="also write the result (JSON) here")
    args = parser.parse_args()
    if args.devices < 2:
        parser.error("--devices: at least 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = asyncio.run(run(args.devices, args.rate, args.connect_rate, args.poll))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
