"""The fault harness (issue 17): a batch over a simulated fleet while the worker, the bridge, the
Temporal server, Mosquitto, PostgreSQL's connections and S3 are killed, one at a time and then
all together, at moments drawn from a seed; then the invariants of bench/fault_checks.py.

    python -m bench --faults [--seed N] [--runs K] [--devices 300] [--rate 200] [--quick]

The seed is printed first: `--seed N` replays the same kills at the same moments (the stack's
own timing still varies a little, so a replay is likely, not certain, to fail the same way).
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.fault_checks import (
    PushCounter,
    asked_again,
    batch_state,
    check_histories,
    check_tasks,
    read_fleet_state,
    reconcile_passes,
    task_rows,
)
from bench.fault_stack import FaultStack
from ota.context import Context
from ota.contracts import BatchInput, device_workflow_id
from ota.device.simulator import device_name, synth_image
from ota.devstack import free_port
from ota.domain import FINAL_TASK_STATES
from ota.services.batches import create_batch
from ota.services.devices import register_fleet
from ota.services.firmware import add_firmware

log = logging.getLogger("bench.faults")
KILLABLE = ("worker", "bridge", "temporal", "mosquitto", "postgres", "s3")
SOURCE, TARGET = "1.0.0", "2.0.0"


@dataclass(frozen=True)
class FaultConfig:
    devices: int = 300
    rate_per_minute: int = 200
    timeout_minutes: int = 2
    max_retries: int = 2  # the platform allows 1, 2 or 5
    install_seconds: float = 2.0
    outage: tuple[float, float] = (1.0, 6.0)  # seconds a killed component stays down
    s3_outage_max: float = 60.0
    settle_seconds: float = 30.0  # after the batch, for late reports to land


# `--faults --quick` and tests/test_faults.py: a modest fleet, short outages, a 1-minute timeout.
QUICK = FaultConfig(
    devices=30,
    rate_per_minute=120,
    timeout_minutes=1,
    install_seconds=1.0,
    outage=(1.0, 4.0),
    s3_outage_max=10.0,
    settle_seconds=20.0,
)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the batch started (a single fault waits for the one before)
    components: tuple[str, ...]
    outages: tuple[float, ...]

    def __str__(self) -> str:
        pairs = zip(self.components, self.outages, strict=True)
        down = ", ".join(f"{c} {o:.1f}s" for c, o in pairs)
        return f"t+{self.at:.0f}s kill {down}"


@dataclass
class RunResult:
    seed: int
    devices: int
    seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    workdir: str = ""

    @property
    def passed(self) -> bool:
        return not self.violations

    def line(self) -> str:
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        verdict = "PASS" if self.passed else f"FAIL ({len(self.violations)} violations)"
        return f"seed {self.seed}: {verdict} in {self.seconds:.0f}s; {states}; {notes}"

    def report(self, most: int = 40) -> str:
        """The line, the kills, and a failure's violations and where its logs are."""
        lines = [self.line(), *(f"    {f}" for f in self.faults)]
        lines += [f"  ! {v}" for v in self.violations[:most]]
        if len(self.violations) > most:
            lines.append(f"  ! ... and {len(self.violations) - most} more")
        if not self.passed:
            lines.append(f"  logs: {self.workdir}")
        return "\n".join(lines)


def schedule(rng: random.Random, cfg: FaultConfig) -> list[Fault]:
    """Each component once, in a random order at random moments of the batch's push window,
    then all together; each down for a random short outage (S3 up to `s3_outage_max`)."""
    window = cfg.devices / cfg.rate_per_minute * 60

    def outage(component: str) -> float:
        high = cfg.s3_outage_max if component == "s3" else cfg.outage[1]
        return round(rng.uniform(cfg.outage[0], high), 1)

    order = rng.sample(KILLABLE, len(KILLABLE))
    moments = sorted(rng.uniform(2, max(window, 10)) for _ in order)
    faults = [Fault(round(t, 1), (c,), (outage(c),)) for t, c in zip(moments, order, strict=True)]
    last = faults[-1].at + rng.uniform(5, 15)
    faults.append(Fault(round(last, 1), KILLABLE, tuple(outage(c) for c in KILLABLE)))
    return faults


async def run_seed(seed: int, cfg: FaultConfig, keep: bool = False) -> RunResult:
    rng = random.Random(seed)
    print(f"faults: seed {seed} (replay: python -m bench --faults --seed {seed})", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"ota-faults-{seed}-"))
    result = RunResult(seed, cfg.devices, workdir=str(workdir))
    faults = schedule(rng, cfg)
    result.faults = [str(f) for f in faults]
    stack = FaultStack(workdir)
    started = time.monotonic()
    try:
        await _run(stack, rng, cfg, faults, result)
    except Exception as exc:  # the harness could not finish: a failure, with its cause
        log.exception("seed %d: the run broke off", seed)
        result.violations.append(f"the run broke off: {exc!r}")
    finally:
        await stack.close(drop_database=result.passed and not keep)
        result.seconds = time.monotonic() - started
    if not result.passed:
        result.notes["database"] = stack.direct_database_url()
    if result.passed and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


async def _run(
    stack: FaultStack, rng: random.Random, cfg: FaultConfig, faults: list[Fault], result: RunResult
) -> None:
    pk = f"faults{uuid.uuid4().hex[:6]}"
    await _bring_up(stack)
    ctx = Context(stack.settings().model_copy(update={"database_url": stack.direct_database_url()}))
    names = [device_name("sim-", i) for i in range(cfg.devices)]
    await asyncio.to_thread(register_fleet, ctx.engine, ctx.settings, pk, names)
    firmware_id = await asyncio.to_thread(_add_firmware, ctx, pk)
    for name in ("worker", "bridge", "api"):
        await asyncio.to_thread(stack.ota(name).start)
    state_file = stack.workdir / "fleet-state.json"
    sim = stack.ota(
        "simulator", "simulate", "--product", pk, "--devices", str(cfg.devices),
        "--version", SOURCE, "--install-seconds", str(cfg.install_seconds),
        "--seed", str(rng.randrange(2**31)), "--state-file", str(state_file),
    )  # fmt: skip
    await asyncio.to_thread(sim.start)
    counter = PushCounter("127.0.0.1", stack.mqtt_port, pk)
    counting = asyncio.create_task(counter.run())
    try:
        await asyncio.wait_for(counter.ready.wait(), 30)
        await _until(lambda: _reported(ctx, pk) >= cfg.devices, 120, "fleet up")
        batch = await create_batch(
            ctx,
            BatchInput(
                batch_id="", firmware_id=firmware_id, src_versions=[SOURCE],
                rate_per_minute=cfg.rate_per_minute, retry_interval_minutes=0,
                max_retries=cfg.max_retries, timeout_minutes=cfg.timeout_minutes,
            ),
        )  # fmt: skip
        batch_id = batch["id"]
        log.info("batch %s: %d devices at %d/min", batch_id, cfg.devices, cfg.rate_per_minute)
        active = await _inject(stack, faults, lambda: _active(ctx, batch_id))
        # Tasks not yet final as each kill began: a kill that found none tested little.
        result.notes["active_at_kills"] = "/".join(map(str, active))
        patience = cfg.devices / cfg.rate_per_minute * 60 + cfg.timeout_minutes * 60 * (
            cfg.max_retries + 1
        )
        done = await _until_or_false(
            lambda: batch_state(ctx.engine, batch_id) == "completed", patience
        )
        if not done:
            result.violations.append(f"batch {batch_id} not completed in {patience:.0f}s")
        await _until_or_false(lambda: _settled(ctx, batch_id), cfg.settle_seconds)
        sim.stop(timeout=30)  # the fleet writes what each device runs
        await asyncio.sleep(1)  # pushes in flight to the counter
    finally:
        counting.cancel()
    tasks = await asyncio.to_thread(task_rows, ctx.engine, batch_id)
    passes = reconcile_passes(stack.components["bridge"].log)
    pushes = counter.pushes()
    truth = read_fleet_state(state_file)
    again = asked_again(stack.components["worker"].log)
    result.violations += check_tasks(
        tasks, truth, pushes, counter.first_at, passes, cfg.devices, again
    )
    client = await ctx.temporal()
    final = {
        device_workflow_id(pk, name): str(t["state"])
        for name, t in tasks.items()
        if t["state"] in FINAL_TASK_STATES
    }
    history_violations, wft_failed = await check_histories(client, final)
    result.violations += history_violations
    states: dict[str, int] = {}
    for t in tasks.values():
        states[str(t["state"])] = states.get(str(t["state"]), 0) + 1
    result.states = states
    result.notes |= {
        "pushes": sum(pushes.values()),
        "attempts": sum(int(t["attempts"] or 0) for t in tasks.values()),  # type: ignore[call-overload]
        "reconcile_passes": len(passes),
        "asked_again": sum(again.values()),
        "wft_failed": wft_failed or 0,
        "on_target": sum(1 for v in truth.values() if v == TARGET),
    }
    ctx.engine.dispose()


async def _bring_up(stack: FaultStack) -> None:
    stack.env |= {
        "OTA_HOME": str(stack.workdir / "ota"),
        "OTA_BROKER_AUTH": "none",
        "OTA_HTTP_PORT": str(free_port()),
        "OTA_API_TOKEN": "faults",
        "OTA_TASK_QUEUE": f"faults-{uuid.uuid4().hex[:6]}",
        "OTA_BRIDGE_CLIENT_ID": f"faults-bridge-{uuid.uuid4().hex[:6]}",
        "OTA_BRIDGE_SHARE_GROUP": f"faults-{uuid.uuid4().hex[:6]}",
        "OTA_BRIDGE_SESSION_EXPIRY_SECONDS": "120",
        "OTA_BATCH_POLL_SECONDS": "1",
    }
    await stack.postgres()
    for comp in (stack.temporal(), stack.mosquitto(), stack.s3()):
        await asyncio.to_thread(comp.start)


def _add_firmware(ctx: Context, pk: str) -> int:
    fw = add_firmware(
        ctx.engine, ctx.store, ctx.settings, src=io.BytesIO(synth_image("default", TARGET)),
        file_name=f"fw-{TARGET}.bin", product_key=pk, name="faults_fw", version=TARGET,
        need_verify=False,
    )  # fmt: skip
    assert fw.id is not None
    return fw.id


async def _inject(stack: FaultStack, faults: list[Fault], active: Callable[[], int]) -> list[int]:
    """Run the schedule: each fault at its moment, or when the one before is over. Returns how
    many tasks were active as each began."""
    t0 = time.monotonic()
    counts = []
    for fault in faults:
        if (delay := t0 + fault.at - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        counts.append(await asyncio.to_thread(active))
        log.info("%s (at t+%.0fs, %d tasks active)", fault, time.monotonic() - t0, counts[-1])
        await asyncio.gather(
            *(_outage(stack, c, o) for c, o in zip(fault.components, fault.outages, strict=True))
        )
    return counts


async def _outage(stack: FaultStack, component: str, seconds: float) -> None:
    if component == "postgres":
        assert stack.pg_proxy is not None
        await stack.pg_proxy.cut(seconds)
        return
    comp = stack.components[component]
    comp.kill()
    await asyncio.sleep(seconds)
    await asyncio.to_thread(comp.start)


def _reported(ctx: Context, pk: str) -> int:
    with ctx.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM device_modules m JOIN devices d ON d.id = m.device_id "
                    "WHERE d.product_key = :pk AND m.version = :v"
                ),
                {"pk": pk, "v": SOURCE},
            ).scalar()
            or 0
        )


def _active(ctx: Context, batch_id: str) -> int:
    with ctx.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM tasks WHERE batch_id = :b "
                    "AND state IN ('to_be_pushed', 'pushed', 'in_upgrade')"
                ),
                {"b": batch_id},
            ).scalar()
            or 0
        )


def _settled(ctx: Context, batch_id: str) -> bool:
    """Every task final and every updated device's version recorded."""
    with ctx.engine.connect() as conn:
        pending = conn.execute(
            text(
                "SELECT count(*) FROM tasks t LEFT JOIN device_modules m "
                "ON m.device_id = t.device_id WHERE t.batch_id = :b AND (t.state IN "
                "('to_be_pushed', 'pushed', 'in_upgrade') OR (t.state = 'updated' AND "
                "(m.version IS NULL OR m.version <> t.target_version)))"
            ),
            {"b": batch_id},
        ).scalar()
    return pending == 0


async def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    if not await _until_or_false(predicate, timeout):
        raise TimeoutError(f"{what}: not reached in {timeout:.0f}s")


async def _until_or_false(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(1)
    return False


def run_seeds(seeds: list[int], cfg: FaultConfig, keep: bool = False) -> list[RunResult]:
    """Run each seed on a fresh stack; print a line per seed and the violations of a failure."""
    results = []
    for seed in seeds:
        result = asyncio.run(run_seed(seed, cfg, keep))
        results.append(result)
        print(result.report(), flush=True)
    passed = sum(r.passed for r in results)
    print(f"faults: {passed}/{len(results)} seeds passed", flush=True)
    return results
