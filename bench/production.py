"""`python -m bench --profile production`: docs/deploy.md's topology, as far as one machine allows.

PostgreSQL for ota (a database made for the run), S3 (`weed mini`) handing devices presigned
URLs, Mosquitto with device identity (ota_auth, else dynamic-security), and two of each of ota's
processes: workers on one task queue, bridges in one share group under their own client ids, API
processes on two ports. Each process has an OTA_HOME of its own, as on separate hosts, so what
they must share comes from settings (the database, the URL, API and key secrets, the MQTT
service secret), not from files under a common home. The firmware is uploaded through one API
process, the batch created through the other, and its progress read from both in turn, as
through a proxy. Then: was every device updated, and did each worker and each bridge carry part
of the load, by their /metrics and, independently, by the identities in Temporal's histories?

Temporal stays the dev server (a cluster on PostgreSQL is more than a machine's test can hold);
it is started with our search attributes, which the workers would otherwise register.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench.fault_stack import PG_ADMIN_URL, weed_mini
from bench.run import IMAGE, _costs, _register, _reported, _sample, _settings, _until, _updated
from bench.scrape import Reading, read_metric
from bench.stack import BenchStack, Proc
from ota.context import Context
from ota.contracts import device_workflow_id
from ota.devstack import answers, free_port
from ota.identity.broker_setup import usable_broker_auth
from ota.identity.sync import sync_broker

log = logging.getLogger("bench.production")
COPIES = 2  # of each of ota's processes
DEVICES_PER_SIM_PROCESS = 500
# What shows a process carried load (the first a process exports is read).
WORKER_METRICS = (["ota_pushes_total"], {"outcome": "pushed"})
BRIDGE_METRICS = (["ota_bridge_messages_received_total", "ota_device_reports_total"], None)
API_DOWNLOAD_METRIC = ["ota_download_requests_total"]
COMPLETED, SIGNALED = 7, 26  # WORKFLOW_TASK_COMPLETED, WORKFLOW_EXECUTION_SIGNALED


async def run_production(devices: int, workdir: Path) -> dict[str, Any]:
    """Start the stack, run one unthrottled batch over `devices` simulated devices, stop it all;
    the result says what happened and what `passed` means (`checks`)."""
    stack = BenchStack(workdir)
    database = f"ota_production_{uuid.uuid4().hex[:10]}"
    sampler = None
    try:
        started = time.monotonic()
        stack.start_temporal()
        _create_database(database)
        stack.env.update(_shared_env(workdir, database))
        s3 = weed_mini(workdir)
        stack.env |= s3.ota_env | {"OTA_S3_DIRECT_URLS": "true"}
        stack.start("s3", s3.argv, s3.env, cwd=s3.data)
        auth = usable_broker_auth(_settings(stack), workdir / "mosquitto")
        stack.env["OTA_BROKER_AUTH"] = auth
        stack.env["OTA_MQTT_URL"] = stack.start_mosquitto(_settings(stack))
        await _until(s3.ready, 90, "S3 (weed mini) up")
        sampler = asyncio.create_task(_sample(stack))
        ctx = Context(_settings(stack))
        await asyncio.to_thread(lambda: ctx.engine)  # migrate once, before the processes start
        await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)  # the services' users
        ports = _start_ota(stack, workdir)
        client = await ctx.temporal()
        await _until_serving(stack, client, ctx.settings.task_queue, ports)
        stack_seconds = time.monotonic() - started

        pk = f"prod{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(_register, ctx, pk, devices)
        stack.start(
            "simulator",
            [sys.executable, "-m", "starter", "simulate", "--product", pk,
             "--devices", str(devices), "--version", "1.0.0", "--install-seconds", "0",
             "--processes", str(max(1, -(-devices // DEVICES_PER_SIM_PROCESS)))],
            {"OTA_HOME": str(workdir / "simulator")},
        )  # fmt: skip
        await _until(lambda: _reported(ctx, pk, "1.0.0") >= devices, 60 + devices / 20, "fleet up")
        apis = [f"http://127.0.0.1:{port}" for port in ports["api"]]
        with _costs(stack, devices) as costs:
            batch = await _batch_through_apis(apis, ctx.settings.api_token or "", pk, devices)
        batch.update(costs)
        updated = await asyncio.to_thread(_updated, ctx, batch["batch_id"])
        identities = await _history_identities(client, pk, devices)
        stack.sample()
        return _result(stack, devices, auth, stack_seconds, batch, updated, identities, ports)
    finally:
        if sampler:
            sampler.cancel()
        stack.stop()
        _drop_database(database)


def _shared_env(workdir: Path, database: str) -> dict[str, str]:
    """What every ota process of the installation must agree on, set as a deployment sets it."""
    return {
        "OTA_HOME": str(workdir / "bench"),  # each process is given its own below
        "OTA_DATABASE_URL": _database_url(database),
        "OTA_URL_SECRET": secrets.token_urlsafe(32),
        "OTA_API_TOKEN": secrets.token_urlsafe(24),
        "OTA_KEY_ENCRYPTION_SECRET": secrets.token_urlsafe(32),
        "OTA_MQTT_SERVICE_SECRET": secrets.token_urlsafe(32),
        "OTA_BRIDGE_SHARE_GROUP": "ota",
        "OTA_BRIDGE_SESSION_EXPIRY_SECONDS": "60",
        "OTA_BATCH_POLL_SECONDS": "1",
    }


def _start_ota(stack: BenchStack, workdir: Path) -> dict[str, list[int]]:
    """COPIES workers, bridges and API processes, each with its own home and ports."""
    ports = {kind: [free_port() for _ in range(COPIES)] for kind in ("worker", "bridge", "api")}
    # Devices download from S3 directly; this is where a proxy in front of the APIs would be.
    stack.env["OTA_PUBLIC_URL"] = f"http://127.0.0.1:{ports['api'][0]}"
    for n, (worker, bridge, api) in enumerate(zip(*ports.values(), strict=True), start=1):
        _start(stack, workdir, f"worker-{n}", "worker", {"OTA_WORKER_METRICS_PORT": str(worker)})
        _start(stack, workdir, f"bridge-{n}", "bridge", {
            "OTA_BRIDGE_METRICS_PORT": str(bridge),
            "OTA_BRIDGE_CLIENT_ID": f"ota-bridge-{n}",  # a session each; the group shares topics
        })  # fmt: skip
        _start(stack, workdir, f"api-{n}", "api", {"OTA_HTTP_PORT": str(api)})
    return ports


def _start(stack: BenchStack, workdir: Path, name: str, command: str, env: dict[str, str]) -> None:
    home = {"OTA_HOME": str(workdir / name)}
    stack.start(name, [sys.executable, "-m", "starter", command], home | env)


async def _until_serving(
    stack: BenchStack, client: Client, task_queue: str, ports: dict[str, list[int]]
) -> None:
    """Both APIs answer, both bridges subscribed, both workers polling: else the first process
    up would take all the load, and the run would prove nothing."""
    for port in ports["api"]:
        await _until(lambda p=port: answers("127.0.0.1", p), 60, f"API on port {port}")
    for proc in _procs(stack, "bridge"):
        log_file = stack.workdir / f"{proc.name}.log"
        await _until(lambda f=log_file: "bridge connected" in f.read_text(), 60, proc.name)

    async def pollers() -> set[str]:
        request = DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        answer = await client.workflow_service.describe_task_queue(request)
        return {p.identity for p in answer.pollers}

    deadline = time.monotonic() + 90
    while len(await pollers()) < COPIES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {COPIES} workers polling {task_queue} in 90 s")
        await asyncio.sleep(0.5)


async def _batch_through_apis(apis: list[str], token: str, pk: str, devices: int) -> dict[str, Any]:
    """Upload through the first API, create the batch through the second, and read its progress
    from each in turn: they share nothing but the database, S3 and their settings."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        health = {
            f"api-{n} {path}": await _health(http, api + path)
            for n, api in enumerate(apis, start=1)
            for path in ("/healthz", "/readyz")
        }
        form = {"name": "prod_fw", "product_key": pk, "version": "2.0.0", "need_verify": "false"}
        answer = await http.post(
            f"{apis[0]}/api/v1/firmware", data=form, files={"file": ("fw-2.0.0.bin", IMAGE)}
        )
        answer.raise_for_status()
        firmware_id = answer.json()["id"]
        started = time.monotonic()
        answer = await http.post(
            f"{apis[-1]}/api/v1/firmware/{firmware_id}/batches", json={"src_versions": ["1.0.0"]}
        )
        answer.raise_for_status()
        batch_id = answer.json()["id"]
        deadline = started + 120 + devices / 5
        turn, unanswered = 0, Counter[str]()
        shown: dict[str, Any] = {}
        while True:
            api = apis[turn % len(apis)]
            turn += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id}: {shown.get('counts')} after the deadline")
            try:  # a proxy would try the next process: so do we, and count it
                shown = (await http.get(f"{api}/api/v1/batches/{batch_id}")).json()
            except httpx.TransportError as exc:
                unanswered[api] += 1
                log.warning("%s did not answer: %r", api, exc)
                await asyncio.sleep(0.5)
                continue
            if shown.get("counts", {}).get("updated", 0) >= devices or shown["state"] in (
                "completed", "canceled",
            ):  # fmt: skip
                break
            await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started
    log.info("batch %s: %d devices in %.1f s", batch_id, devices, elapsed)
    return {
        "batch_id": batch_id,
        "seconds": round(elapsed, 2),
        "devices_per_s": round(devices / elapsed, 2),
        "counts_seen_by_api": shown.get("counts"),
        "api_health_status": health,
        "progress_reads": turn,
        "progress_reads_unanswered": dict(unanswered),
    }


async def _health(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """Noted, not judged (each process's own tests judge its health routes): the status, and
    what a /readyz that is not ready says is wrong."""
    answer = await http.get(url)
    out: dict[str, Any] = {"status": answer.status_code}
    if answer.status_code == 503 and url.endswith("/readyz"):
        checks = answer.json().get("checks", [])
        out["failing"] = [c for c in checks if not c.get("ok", True)]
    return out


async def _history_identities(client: Client, pk: str, devices: int) -> dict[str, Counter[str]]:
    """Who did the work, by Temporal's own record: the worker identity that completed each
    device workflow's tasks, and the client identity (a bridge's) that sent each signal."""
    from ota.device.simulator import device_name

    completed: Counter[str] = Counter()
    signaled: Counter[str] = Counter()
    for i in range(devices):
        handle = client.get_workflow_handle(device_workflow_id(pk, device_name("sim-", i)))
        for event in (await handle.fetch_history()).events:
            if event.event_type == COMPLETED:
                completed[event.workflow_task_completed_event_attributes.identity] += 1
            elif event.event_type == SIGNALED:
                signaled[event.workflow_execution_signaled_event_attributes.identity] += 1
    return {"workflow_tasks": completed, "signals": signaled}


def _result(
    stack: BenchStack,
    devices: int,
    auth: str,
    stack_seconds: float,
    batch: dict[str, Any],
    updated: int,
    identities: dict[str, Counter[str]],
    ports: dict[str, list[int]],
) -> dict[str, Any]:
    def url(port: int) -> str:
        return f"http://127.0.0.1:{port}/metrics"

    workers = {
        p.name: read_metric(url(port), *WORKER_METRICS)
        for p, port in zip(_procs(stack, "worker"), ports["worker"], strict=True)
    }
    bridges = {
        p.name: read_metric(url(port), *BRIDGE_METRICS)
        for p, port in zip(_procs(stack, "bridge"), ports["bridge"], strict=True)
    }
    apis = {
        p.name: read_metric(url(port), API_DOWNLOAD_METRIC)
        for p, port in zip(_procs(stack, "api"), ports["api"], strict=True)
    }
    # Exit codes of any process that stopped before the end (-2: someone's SIGINT).
    exited = {p.name: p.popen.returncode for p in stack.procs if p.popen.poll() is not None}
    by_history = {
        "worker_workflow_tasks": _by_process(stack, "worker", identities["workflow_tasks"]),
        "bridge_signals": _by_process(stack, "bridge", identities["signals"]),
    }
    checks = {
        "every_device_updated": updated == devices,
        "every_api_read_answered": not batch["progress_reads_unanswered"],
        "no_process_exited": not exited,
        **{f"{name}_carried_load": _carried(r) for name, r in (workers | bridges).items()},
        **{f"{name}_by_history": n > 0 for part in by_history.values() for name, n in part.items()},
    }
    # Presigned URLs: the bytes come from S3, so no API process serves a download. Only a
    # confirmation of what the devices' updates show: a metric missing here fails nothing.
    confirmations = {f"{name}_served_no_download": _none_counted(r) for name, r in apis.items()}
    return {
        "profile": "production",
        "devices": devices,
        "broker_auth": auth,
        "topology": {
            "workers": COPIES,
            "bridges": COPIES,
            "apis": COPIES,
            "database": "postgresql",
            "storage": "s3 (weed mini), presigned URLs",
            "temporal": "dev server",
        },  # fmt: skip
        "stack_start_seconds": round(stack_seconds, 1),
        "updated": updated,
        "batch": batch,
        "metrics": {name: r.as_dict() for name, r in (workers | bridges | apis).items()},
        "by_history": by_history,
        "cpu_ms_per_device": {
            name: round(s * 1000 / devices, 1) for name, s in batch["cpu_seconds"].items() if s
        },
        "peak_rss_mb": {p.name: round(p.peak_rss_mb, 1) for p in stack.procs},
        "exited_early": exited,
        "checks": checks,
        "confirmations": confirmations,
        "missing": [r.missing for r in (workers | bridges | apis).values() if r.missing],
        # A metric missing fails a check too: it cannot show that process carried load.
        "passed": all(v is True for v in checks.values())
        and all(v is not False for v in confirmations.values()),
    }


def _carried(reading: Reading) -> bool | None:
    """True if the process counted work, False if it counted none, None if it cannot tell."""
    return None if reading.value is None else reading.value > 0


def _none_counted(reading: Reading) -> bool | None:
    return None if reading.value is None else reading.value == 0


def _by_process(stack: BenchStack, kind: str, counts: Counter[str]) -> dict[str, int]:
    """Counts by Temporal identity ("pid@host", the SDK's default) turned into process names."""
    host = socket.gethostname()
    return {p.name: counts.get(f"{p.popen.pid}@{host}", 0) for p in _procs(stack, kind)}


def _procs(stack: BenchStack, kind: str) -> list[Proc]:
    return [p for p in stack.procs if p.name.startswith(f"{kind}-")]


def _database_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


def _create_database(database: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')


def _drop_database(database: str) -> None:
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    except psycopg.Error as exc:
        log.warning("could not drop database %s: %s", database, exc)


def print_production(report: dict[str, Any]) -> None:
    batch = report["batch"]
    print(f"production profile: {report['devices']} devices, broker auth {report['broker_auth']}")
    print(f"  stack up in {report['stack_start_seconds']} s; batch {batch['batch_id']}:", end=" ")
    print(f"{report['updated']} updated in {batch['seconds']} s ({batch['devices_per_s']}/s)")
    for name, reading in report["metrics"].items():
        shown = reading.get("value", reading.get("missing"))
        print(f"  {name:10} {reading['metric']:32} {shown}")
    for what, counts in report["by_history"].items():
        print(f"  by Temporal's histories, {what}: {counts}")
    print(f"  CPU ms per device: {report['cpu_ms_per_device']}")
    for what, health in report["batch"]["api_health_status"].items():
        print(f"  {what}: HTTP {health['status']} {health.get('failing', '')}")
    for missing in report["missing"]:
        print(f"  !! {missing}")
    failed = [name for name, ok in report["checks"].items() if ok is not True]
    failed += [name for name, ok in report["confirmations"].items() if ok is False]
    print("  PASSED" if report["passed"] else f"  FAILED: {', '.join(failed)}")
