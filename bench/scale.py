"""python -m bench.scale --devices 100000 [--out docs/bench/...json]: the platform's own work at
fleet size, each step as an operator runs it, on a stack of real processes (bench/stack.py): a
fresh Temporal dev server, PostgreSQL (a database made for the run), Mosquitto with ota_auth,
and ota's worker, bridge and API.

1. registration: `ota device import` of an N-row CSV (each device's secret, and its broker user
   put on the broker by the command itself), then a full `sync_broker` that must find nothing
   to change; and `register_fleet` + `secrets_of` for N more, what `ota simulate --register`
   does before its fleet connects.
2. batch creation: `ota batch create` over the N imported devices (none online: a push to an
   offline device records it and waits for the device), timed to its first push and to every
   task row written; the worker's RSS before, at its peak while preparing, and after.
3. cancel: after the batch has pushed for `--push-seconds`, `ota batch cancel --all`, timed
   until no task is active and no device workflow runs.

The targets: 1 under 60 s, 2 under 30 s to every task row, 3 in minutes (issue 11).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from bench.fault_stack import PG_ADMIN_URL
from bench.production import _create_database, _database_url, _drop_database
from bench.run import IMAGE, _answers_ok, _context, _sample, _settings, _until, new_workdir
from bench.stack import BenchStack, Proc
from ota.context import Context
from ota.contracts import device_workflow_id
from ota.db.models import Batch, Task
from ota.device.simulator import device_name
from ota.devstack import free_port
from ota.domain import ACTIVE_TASK_STATES
from ota.identity.broker_setup import USERS_FILE, usable_broker_auth
from ota.identity.sync import sync_broker
from ota.services import device_identity
from ota.services.devices import register_fleet
from ota.services.firmware import add_firmware

log = logging.getLogger("bench.scale")
TARGETS = {"import_s": 60.0, "tasks_written_s": 30.0}
DEVICE_WORKFLOWS = "WorkflowType = 'DeviceUpgradeWorkflow'"


async def run_scale(devices: int, workdir: Path, push_seconds: float) -> dict[str, Any]:
    stack = BenchStack(workdir)
    database = f"ota_scale_{uuid.uuid4().hex[:8]}"
    _create_database(database)
    sampler = None
    try:
        stack.start_temporal()
        stack.env["OTA_DATABASE_URL"] = _database_url(database)
        stack.env["OTA_BROKER_AUTH"] = "plugin"
        stack.env["OTA_MQTT_SERVICE_SECRET"] = uuid.uuid4().hex
        stack.env["OTA_BROKER_AUTH"] = usable_broker_auth(_settings(stack), workdir / "mosquitto")
        mqtt_url = stack.start_mosquitto(_settings(stack))
        ctx = _context(stack, workdir, mqtt_url)
        await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)  # the services' users
        metrics = free_port()
        for name in ("worker", "bridge", "api"):
            extra = {"OTA_BRIDGE_METRICS_PORT": str(metrics)} if name == "bridge" else {}
            stack.start(name, [sys.executable, "-m", "starter", name], extra)
        await _until(lambda: _answers_ok(f"http://127.0.0.1:{metrics}/readyz"), 60, "bridge")
        sampler = asyncio.create_task(_sample(stack))
        result: dict[str, Any] = {
            "devices": devices,
            "broker_auth": ctx.settings.broker_auth,
            "database": "postgresql",
            "load_before": _loadavg(),
        }
        pk = f"scale{uuid.uuid4().hex[:6]}"
        result["registration"] = await asyncio.to_thread(_registration, stack, ctx, pk, devices)
        worker = next(p for p in stack.procs if p.name == "worker")
        batch = await _create(stack, ctx, worker, pk)
        result["batch"] = batch
        await asyncio.sleep(max(0.0, push_seconds - batch["tasks_written_s"]))
        result["cancel"] = await _cancel(stack, ctx, batch["id"], pk)
        result["worker_rss_mb_end"] = round(worker.rss_mb(), 1)
        stack.sample()
        result["peak_rss_mb"] = {p.name: round(p.peak_rss_mb, 1) for p in stack.procs}
        result["cpu_seconds"] = {p.name: round(p.cpu_seconds, 1) for p in stack.procs}
        result["load_after"] = _loadavg()
        return result
    finally:
        if sampler:
            sampler.cancel()
        stack.stop()
        _drop_database(database)


# --- 1. registration ----------------------------------------------------------------------------


def _registration(stack: BenchStack, ctx: Context, pk: str, devices: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _ota(stack, "product", "add", pk, "--name", "Scale bench")
    csv = stack.workdir / "devices.csv"
    csv.write_text("name,version\n" + "".join(f"{_name(i)},1.0.0\n" for i in range(devices)))
    started, cpu = time.monotonic(), _children_cpu()
    broker_cpu = stack.cpu_seconds()["mosquitto"]
    said = _ota(stack, "device", "import", str(csv), "--product", pk,
                "--secrets", str(stack.workdir / "secrets.csv"))  # fmt: skip
    out["import_s"] = round(time.monotonic() - started, 2)
    # CPU, which the machine's load does not inflate: the command with its helper processes,
    # and the broker's.
    out["import_cpu_s"] = round(_children_cpu() - cpu, 2)
    out["import_broker_cpu_s"] = round(stack.cpu_seconds()["mosquitto"] - broker_cpu, 2)
    out["import_said"] = said.strip().splitlines()
    log.info("ota device import: %d devices in %.1f s", devices, out["import_s"])
    # Every broker user is there and right: a full sync finds nothing to do.
    started = time.monotonic()
    report = sync_broker(ctx.engine, ctx.settings)
    out["full_sync_s"] = round(time.monotonic() - started, 2)
    out["full_sync_changed"] = report.changed
    users = stack.workdir / "mosquitto" / USERS_FILE
    out["users_file_bytes"] = users.stat().st_size if users.exists() else None
    # What `ota simulate --register` does before its fleet connects (the fleet itself is the
    # simulator's business: bench/sim_memory.py).
    sim_pk = f"{pk}s"
    names = [device_name("sim-", i) for i in range(devices)]
    started = time.monotonic()
    register_fleet(ctx.engine, ctx.settings, sim_pk, names)
    out["simulate_register_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    device_identity.secrets_of(ctx.engine, ctx.settings, sim_pk, names)
    out["simulate_secrets_s"] = round(time.monotonic() - started, 2)
    log.info(
        "simulate --register: %d devices in %.1f s, their secrets read in %.1f s",
        devices,
        out["simulate_register_s"],
        out["simulate_secrets_s"],
    )
    return out


def _name(i: int) -> str:
    return f"dev-{i:06d}"


# --- 2. batch creation --------------------------------------------------------------------------


async def _create(stack: BenchStack, ctx: Context, worker: Proc, pk: str) -> dict[str, Any]:
    fw = add_firmware(
        ctx.engine, ctx.store, ctx.settings, src=io.BytesIO(IMAGE), file_name="fw-2.0.0.bin",
        product_key=pk, name="scale_fw", version="2.0.0", need_verify=False,
    )  # fmt: skip
    rss_before = worker.rss_mb()
    worker.peak_rss_mb = rss_before  # the peak from here on is the batch's
    started = time.monotonic()
    said = await asyncio.to_thread(
        _ota, stack, "batch", "create", str(fw.id), "--src-version", "1.0.0", "--json"
    )
    out: dict[str, Any] = {"id": json.loads(said)["id"]}
    out["create_command_s"] = round(time.monotonic() - started, 2)
    first_push = tasks_written = None
    while first_push is None or tasks_written is None:
        pushed, prepared, total = await asyncio.to_thread(_progress, ctx, out["id"])
        now = round(time.monotonic() - started, 2)
        if first_push is None and pushed:
            first_push = now
        if tasks_written is None and prepared:
            tasks_written = now
            out["tasks"] = total
        if now > 600:
            raise TimeoutError(f"batch {out['id']}: not prepared and pushing in 10 min")
        await asyncio.sleep(0.2)
    out["first_push_s"], out["tasks_written_s"] = first_push, tasks_written
    out["worker_rss_mb"] = {
        "before": round(rss_before, 1),
        "peak_while_preparing": round(worker.peak_rss_mb, 1),
    }
    log.info(
        "batch %s: first push after %.1f s, %d task rows written after %.1f s; worker RSS "
        "%.0f MB before, %.0f MB at most",
        out["id"], first_push, out["tasks"], tasks_written, rss_before, worker.peak_rss_mb,
    )  # fmt: skip
    return out


def _progress(ctx: Context, batch_id: str) -> tuple[int, bool, int]:
    """(tasks a device workflow has started, whether every task row is written, how many)."""
    with Session(ctx.engine) as s:
        batch = s.get(Batch, batch_id)
        started = s.exec(
            select(func.count()).where(Task.batch_id == batch_id, col(Task.started).is_(True))
        ).one()
        prepared = batch is not None and batch.prepared_at is not None
        return started, prepared, batch.total if batch else 0


# --- 3. cancel ----------------------------------------------------------------------------------


async def _cancel(stack: BenchStack, ctx: Context, batch_id: str, pk: str) -> dict[str, Any]:
    client = await ctx.temporal()
    query = f"{DEVICE_WORKFLOWS} AND ExecutionStatus = 'Running'"
    query += f" AND WorkflowId STARTS_WITH '{device_workflow_id(pk, '')}'"
    out: dict[str, Any] = {}
    with Session(ctx.engine) as s:
        out["started_before"] = s.exec(
            select(func.count()).where(Task.batch_id == batch_id, col(Task.started).is_(True))
        ).one()
    out["running_device_workflows_before"] = (await client.count_workflows(query)).count
    started = time.monotonic()
    await asyncio.to_thread(_ota, stack, "batch", "cancel", batch_id, "--all")
    out["command_s"] = round(time.monotonic() - started, 2)
    while True:
        active = await asyncio.to_thread(_active, ctx, batch_id)
        running = (await client.count_workflows(query)).count
        if not active and not running:
            break
        if time.monotonic() - started > 3600:
            raise TimeoutError(f"cancel: {active} tasks active, {running} running after 1 h")
        await asyncio.sleep(1)
    out["seconds"] = round(time.monotonic() - started, 2)
    with Session(ctx.engine) as s:
        rows = s.exec(
            select(Task.state, func.count()).where(Task.batch_id == batch_id).group_by(Task.state)
        )
        out["tasks_by_state"] = dict(rows.all())
        batch = s.get(Batch, batch_id)
        out["batch_state"] = batch.state if batch else None
    log.info(
        "cancel of %s (%d devices pushed, %d device workflows running): done in %.1f s",
        batch_id, out["started_before"], out["running_device_workflows_before"], out["seconds"],
    )  # fmt: skip
    return out


def _active(ctx: Context, batch_id: str) -> int:
    with Session(ctx.engine) as s:
        return s.exec(
            select(func.count()).where(
                Task.batch_id == batch_id, col(Task.state).in_(ACTIVE_TASK_STATES)
            )
        ).one()


# --- helpers ------------------------------------------------------------------------------------


def _ota(stack: BenchStack, *argv: str) -> str:
    """An `ota` command as an operator runs it, in the stack's environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "starter", *argv],
        env={**_environ(), **stack.env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ota {' '.join(argv)}: exit {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def _environ() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "200"}


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def print_table(result: dict[str, Any]) -> None:
    reg, batch, cancel = result["registration"], result["batch"], result["cancel"]
    rows = [
        ("ota device import (CLI, broker users included)", f"{reg['import_s']:.1f} s", "< 60 s"),
        ("  its CPU: the command, the broker", f"{reg.get('import_cpu_s', 0):.1f} s, "
         f"{reg.get('import_broker_cpu_s', 0):.1f} s", ""),
        ("full broker sync afterwards", f"{reg['full_sync_s']:.1f} s, "
         f"{reg['full_sync_changed']} changed", "0 changed"),
        ("simulate --register (register_fleet)", f"{reg['simulate_register_s']:.1f} s", ""),
        ("simulate: the fleet's secrets read", f"{reg['simulate_secrets_s']:.1f} s", ""),
        ("batch create: command returned", f"{batch['create_command_s']:.1f} s", ""),
        ("batch create: first push", f"{batch['first_push_s']:.1f} s", "at once"),
        ("batch create: every task row written", f"{batch['tasks_written_s']:.1f} s", "< 30 s"),
        ("worker RSS before / peak preparing / end",
         f"{batch['worker_rss_mb']['before']:.0f} / "
         f"{batch['worker_rss_mb']['peak_while_preparing']:.0f} / "
         f"{result['worker_rss_mb_end']:.0f} MB", "flat"),
        (f"cancel --all ({cancel['started_before']} pushed)", f"{cancel['seconds']:.1f} s",
         "minutes"),
        ("tasks after cancel", ", ".join(f"{k} {v}" for k, v in cancel["tasks_by_state"].items()),
         "none active"),
    ]  # fmt: skip
    print(f"\n{result['devices']:,} devices ({result['broker_auth']}, {result['database']}), "
          f"load {result['load_before']} -> {result['load_after']}")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for what, got, target in rows:
        print(f"  {what:<{width}}  {got:<28} {target}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench-scale.json"))
    parser.add_argument(
        "--push-seconds", type=float, default=120.0,
        help="how long the batch pushes before it is canceled (from `ota batch create`)",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.info("PostgreSQL: %s", PG_ADMIN_URL.rsplit("@", 1)[-1])
    result = asyncio.run(run_scale(args.devices, new_workdir(), args.push_seconds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
