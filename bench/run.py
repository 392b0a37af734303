"""One benchmark run at one fleet size: baseline fan-out, an unthrottled batch, a --rate batch."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select
from temporalio.client import Client

from bench.accounts import bench_account
from bench.baseline import run_baseline
from bench.instrumentation import (
    bump_seconds,
    counter_bumps,
    instrumentation_cost,
    scrape_all,
    scrape_cpu_seconds,
)
from bench.measure import (
    batch_run_lengths,
    device_histories,
    ops_between,
    pacing,
    persistence_requests,
    push_to_updated,
    task_times,
    updated_per_min,
)
from bench.profile import Profiler
from bench.stack import BenchStack
from ota.context import Context
from ota.contracts import BatchInput, batch_workflow_id
from ota.db.models import DeviceModule, Task
from ota.device.simulator import device_name, processes_for
from ota.devstack import free_port
from ota.identity.broker_setup import usable_broker_auth
from ota.identity.sync import sync_broker
from ota.mqtt import V311, MqttEndpoint
from ota.services.batches import create_batch
from ota.services.devices import register_fleet
from ota.services.firmware import add_firmware
from ota.settings import Settings

log = logging.getLogger("bench")
DEVICES_PER_SIM_PROCESS = 500
IMAGE = os.urandom(64 * 1024)  # the firmware every simulated device downloads


PARTS = ("ratio", "rate", "rules")  # what a run measures, in this order; all by default


async def run_size(
    devices: int,
    mqtt_url: str | None,
    rate: int | None,
    workdir: Path,
    profile: bool = False,
    parts: tuple[str, ...] = PARTS,
    baseline_devices: int | None = None,
) -> dict[str, Any]:
    """`mqtt_url` None: start a Mosquitto of the stack's own. `profile`: py-spy the
    unthrottled batch (bench/profile.py). `parts`: ratio (fan-out, our unthrottled batch,
    fan-out), rate (the `rate` batch), rules (the batches with a stop rule and phases); a run
    at 100,000 devices takes hours per part, so each can run alone. `baseline_devices`: the
    fan-outs' size (default the fleet's), since the engine's fan-out keeps its pace with size."""
    stack = BenchStack(workdir)
    profiler = Profiler(stack, workdir) if profile else None
    sampler = None
    try:
        stack.start_temporal()
        stack.env["OTA_BROKER_AUTH"] = "plugin" if mqtt_url is None else "none"
        stack.env["OTA_MQTT_SERVICE_SECRET"] = uuid.uuid4().hex
        if mqtt_url is None:  # ota_auth, or dynamic-security where it cannot be built
            usable = usable_broker_auth(_settings(stack), workdir / "mosquitto")
            stack.env["OTA_BROKER_AUTH"] = usable
        mqtt_url = mqtt_url or stack.start_brokers(_settings(stack), devices)
        sampler = asyncio.create_task(_sample(stack))
        ctx = _context(stack, workdir, mqtt_url)
        client = await ctx.temporal()
        await asyncio.to_thread(sync_broker, ctx.engine, ctx.settings)  # the services' users
        # MQTT 3.1.1, as aiomqtt's default gave the baseline before: its numbers stay comparable.
        mqtt = replace(await asyncio.to_thread(bench_account, ctx.settings), protocol=V311)
        # Metrics on, as deployed: the figures below include what they cost (instrumentation).
        metrics = {"worker": free_port(), "bridge": free_port()}
        stack.env["OTA_WORKER_METRICS_PORT"] = str(metrics["worker"])
        stack.env["OTA_BRIDGE_METRICS_PORT"] = str(metrics["bridge"])
        metrics_urls = {n: f"http://127.0.0.1:{port}/metrics" for n, port in metrics.items()}
        metrics_urls["api"] = f"http://127.0.0.1:{stack.env['OTA_HTTP_PORT']}/metrics"
        for name in ("worker", "bridge", "api"):
            stack.start(name, [sys.executable, "-m", "starter", name])
        # Devices report their version once, on connecting: the bridge must be subscribed first.
        ready = f"http://127.0.0.1:{metrics['bridge']}/readyz"
        await _until(lambda: _answers_ok(ready), 60, "bridge ready")
        pk = f"bench{uuid.uuid4().hex[:6]}"
        register_seconds = await asyncio.to_thread(_register, ctx, pk, devices)
        # As before up to 10,000 devices; past that the open-file limit sets the floor.
        processes = max(processes_for(devices), min(-(-devices // DEVICES_PER_SIM_PROCESS), 20))
        stack.start(
            "simulator",
            [sys.executable, "-m", "starter", "simulate", "--product", pk,
             "--devices", str(devices), "--version", "1.0.0",
             "--install-seconds", "0", "--processes", str(processes),
             # As deployed fleets on Alibaba's device SDKs do (and cheaper to simulate).
             "--mqtt-protocol", "3.1.1"],
        )  # fmt: skip
        await _until(lambda: _reported(ctx, pk, "1.0.0") >= devices, 60 + devices / 20, "fleet up")

        # Baseline, ota, baseline again: the server's file grows with every run, so a baseline
        # on both sides of ours cancels the order's bias; the fleet is connected (idle) in all.
        rss = {"fleet_up": stack.rss_mb()}
        result: dict[str, Any] = {
            "devices": devices,
            "parts": list(parts),
            "broker_auth": ctx.settings.broker_auth,
            "register_seconds": register_seconds,
            "rss_mb_after": rss,
            "pss_mb_fleet_up": stack.pss_mb(),
        }
        source = "1.0.0"
        if "ratio" in parts:
            await _ratio(stack, ctx, client, mqtt, pk, devices, baseline_devices or devices,
                         metrics_urls, profiler, result)  # fmt: skip
            source = "2.0.0"
        if rate and "rate" in parts:
            fw2 = _firmware(ctx, pk, "3.0.0")
            result["rate"] = await _batch(ctx, pk, fw2, source, devices, rate)
            rss["rate"] = stack.rss_mb()
            source = "3.0.0"
        if "rules" in parts:
            await _rules(stack, ctx, pk, source, devices, result)
        stack.sample()
        result["peak_rss_mb"] = {p.name: round(p.peak_rss_mb, 1) for p in stack.procs}
        # Where the machine's two cores went (the fleet's simulation shares them with the rest).
        result["cpu_seconds"] = {p.name: round(p.cpu_seconds, 1) for p in stack.procs}
        return result
    finally:
        if sampler:
            sampler.cancel()
        stack.stop()


async def _ratio(
    stack: BenchStack,
    ctx: Context,
    client: Client,
    mqtt: MqttEndpoint,
    pk: str,
    devices: int,
    baseline_devices: int,
    metrics_urls: dict[str, str],
    profiler: Profiler | None,
    result: dict[str, Any],
) -> None:
    """The engine's fan-out, our unthrottled batch from 1.0.0 to 2.0.0, the fan-out again."""
    rss = result["rss_mb_after"]
    result["baselines"] = [await _baseline(stack, client, mqtt, baseline_devices)]
    fw1 = _firmware(ctx, pk, "2.0.0")
    texts_before = await asyncio.to_thread(scrape_all, metrics_urls)
    with _costs(stack, devices) as costs:
        if profiler:
            profiler.start()
        result["unthrottled"] = await _batch(ctx, pk, fw1, "1.0.0", devices, None)
    result["unthrottled"].update(costs)
    result["instrumentation"] = await asyncio.to_thread(
        _instrumentation, stack, metrics_urls, texts_before, result["unthrottled"], devices
    )
    rss["unthrottled"] = stack.rss_mb()
    if profiler:
        result["unthrottled"]["profile"] = profiler.stop()
    names = await asyncio.to_thread(_device_names, ctx, pk)
    result["unthrottled"].update(await device_histories(client, pk, names))
    result["baselines"].append(await _baseline(stack, client, mqtt, baseline_devices))
    result["baseline"] = _mean_baseline(result["baselines"])


async def _rules(
    stack: BenchStack, ctx: Context, pk: str, source: str, devices: int, result: dict[str, Any]
) -> None:
    """The unthrottled batch again with a failure-rate stop rule (never tripping: nothing
    fails), for what the rule costs the pacer (its counts by failure reason, its events); then
    with gated phases too (10%, 50%, all; each promoted once 90% of its devices run the new
    version): what the gates' counts and holds cost it."""
    fw3 = _firmware(ctx, pk, "4.0.0")
    with _costs(stack, devices) as costs:
        result["stop_rule"] = await _batch(ctx, pk, fw3, source, devices, None, stop_at=50)
    result["stop_rule"].update(costs)
    fw4 = _firmware(ctx, pk, "5.0.0")
    with _costs(stack, devices) as costs:
        result["phases"] = await _batch(
            ctx, pk, fw4, "4.0.0", devices, None, stop_at=50, phases=[10, 50], promote_at=90
        )
    result["phases"].update(costs)


async def _baseline(
    stack: BenchStack, client: Client, mqtt: MqttEndpoint, devices: int
) -> dict[str, Any]:
    log.info("%d devices: baseline fan-out", devices)
    with _costs(stack, devices) as costs:
        out = await run_baseline(client, mqtt, devices, uuid.uuid4().hex[:6])
    out.update(costs)
    log.info("baseline: %.1f devices/s", out["devices_per_s"])
    return out


@contextlib.contextmanager
def _costs(stack: BenchStack, devices: int) -> Iterator[dict[str, Any]]:
    """What the block cost the server's database (operations by kind, and per device) and each
    process's CPU (the bench process itself runs the baseline's worker: `bench`)."""
    costs: dict[str, Any] = {}
    ops_before = persistence_requests(stack.metrics_port)
    cpu_before = {**stack.cpu_seconds(), "bench": time.process_time()}
    yield costs
    ops = ops_between(ops_before, persistence_requests(stack.metrics_port))
    cpu_after = {**stack.cpu_seconds(), "bench": time.process_time()}
    costs["db_ops"] = ops
    costs["db_ops_per_device"] = sum(ops.values()) / devices
    costs["cpu_seconds"] = {
        name: round(cpu - cpu_before.get(name, 0.0), 1) for name, cpu in cpu_after.items()
    }


def _instrumentation(
    stack: BenchStack,
    urls: dict[str, str],
    texts_before: dict[str, str | None],
    batch: dict[str, Any],
    devices: int,
) -> dict[str, Any]:
    """What the metrics cost each device of the unthrottled batch (bench/instrumentation.py)."""
    bumps = counter_bumps(scrape_all(urls)) - counter_bumps(texts_before)
    stack_cpu = sum(cpu for name, cpu in batch["cpu_seconds"].items() if name != "bench")
    cost = instrumentation_cost(
        devices=devices,
        seconds=batch["seconds"],
        bumps=bumps,
        per_bump=bump_seconds(),
        per_scrape=scrape_cpu_seconds(urls, stack.cpu_seconds),
        stack_cpu_seconds=stack_cpu,
    )
    log.info(
        "instrumentation: %.2f counter bumps and %.3f ms of CPU per device, %.2f%% of the "
        "stack's %.1f ms per device",
        cost["counter_bumps_per_device"],
        cost["bumps_ms_per_device"] + cost["scrapes_ms_per_device"],
        cost["share_of_cpu_per_device"] * 100,
        cost["stack_cpu_ms_per_device"],
    )
    return cost


def _mean_baseline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline our run is compared with: the mean of the runs before and after it."""
    return {
        "devices_per_s": sum(r["devices_per_s"] for r in runs) / len(runs),
        "db_ops_per_device": sum(r["db_ops_per_device"] for r in runs) / len(runs),
        "each_devices_per_s": [round(r["devices_per_s"], 2) for r in runs],
    }


async def _batch(
    ctx: Context,
    pk: str,
    firmware_id: int,
    source: str,
    devices: int,
    rate: int | None,
    **options: Any,
) -> dict[str, Any]:
    """One batch over the fleet, until every device is updated; `options`: more batch options."""
    label = f"rate {rate}/min" if rate else "unthrottled"
    label += "".join(f", {name} {value}" for name, value in options.items())
    started = time.monotonic()
    batch = await create_batch(
        ctx,
        BatchInput(batch_id="", firmware_id=firmware_id, src_versions=[source],
                   rate_per_minute=rate, timeout_minutes=60, **options),
    )  # fmt: skip
    batch_id = batch["id"]
    patience = 120 + devices / 5 + (devices / rate * 60 if rate else 0)
    await _until(lambda: _updated(ctx, batch_id) >= devices, patience, label)
    elapsed = time.monotonic() - started
    times = await asyncio.to_thread(task_times, ctx.engine, batch_id)
    out: dict[str, Any] = {
        "batch_id": batch_id,
        "seconds": elapsed,
        "devices_per_s": devices / elapsed,
        "updated_per_min": updated_per_min(times),
        **push_to_updated(times),
    }
    if rate:
        out["pacing"] = pacing(times, rate)
    client = await ctx.temporal()
    out["batch_run_events"] = await batch_run_lengths(client, batch_workflow_id(batch_id))
    out["pacer_events_per_device"] = round(sum(out["batch_run_events"]) / devices, 2)
    log.info("%s: %d devices in %.1f s (%.1f/s)", label, devices, elapsed, devices / elapsed)
    return out


def _register(ctx: Context, pk: str, devices: int) -> float:
    """Register the fleet as `ota simulate --register` does (a secret per device, the broker's
    users for them included): the figure the README quotes for registration."""
    started = time.monotonic()
    names = [device_name("sim-", i) for i in range(devices)]
    register_fleet(ctx.engine, ctx.settings, pk, names)
    elapsed = time.monotonic() - started
    log.info("registered %d devices (with the broker's users) in %.1f s", devices, elapsed)
    return round(elapsed, 2)


def _settings(stack: BenchStack) -> Settings:
    return Settings(**{k[4:].lower(): v for k, v in stack.env.items() if k.startswith("OTA_")})


def _context(stack: BenchStack, workdir: Path, mqtt_url: str) -> Context:
    home = workdir / "ota"
    stack.env.update(
        {
            "OTA_HOME": str(home),
            "OTA_MQTT_URL": mqtt_url,
            "OTA_HTTP_PORT": str(free_port()),
            "OTA_API_TOKEN": "bench",
            "OTA_TASK_QUEUE": f"bench-{uuid.uuid4().hex[:6]}",
            "OTA_BRIDGE_CLIENT_ID": f"bench-bridge-{uuid.uuid4().hex[:6]}",
            "OTA_BRIDGE_SHARE_GROUP": f"bench-{uuid.uuid4().hex[:6]}",
            "OTA_BRIDGE_SESSION_EXPIRY_SECONDS": "60",
            "OTA_BATCH_POLL_SECONDS": "1",
        }
    )
    ctx = Context(_settings(stack))
    ctx.engine  # migrate once, before worker, bridge and api start  # noqa: B018
    return ctx


def _firmware(ctx: Context, pk: str, version: str) -> int:
    fw = add_firmware(
        ctx.engine, ctx.store, ctx.settings, src=io.BytesIO(IMAGE), file_name=f"fw-{version}.bin",
        product_key=pk, name="bench_fw", version=version, need_verify=False,
    )  # fmt: skip
    assert fw.id is not None
    return fw.id


def _reported(ctx: Context, pk: str, version: str) -> int:
    from ota.db.models import Device

    with Session(ctx.engine) as s:
        return s.exec(
            select(func.count())
            .select_from(DeviceModule)
            .join(Device, Device.id == DeviceModule.device_id)  # type: ignore[arg-type]
            .where(Device.product_key == pk, DeviceModule.version == version)
        ).one()


def _updated(ctx: Context, batch_id: str) -> int:
    with Session(ctx.engine) as s:
        return s.exec(
            select(func.count()).where(Task.batch_id == batch_id, Task.state == "updated")
        ).one()


def _device_names(ctx: Context, pk: str) -> list[str]:
    from ota.db.models import Device

    with Session(ctx.engine) as s:
        return list(s.exec(select(Device.name).where(Device.product_key == pk)))


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # refused, or 503 (HTTPError is an OSError)
        return False


async def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done in {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def _sample(stack: BenchStack) -> None:
    while True:
        stack.sample()
        await asyncio.sleep(0.5)


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ota-bench-"))
