"""The simulator at fleet sizes past one broker: devices spread over a broker tier's leaves.

    python -m bench.sim_memory --devices 100000 [--leaves N] [--processes P] [--push 10000]

Starts a hub and leaves (ota/broker_tier.py) enforcing device identity with ota_auth, puts
every device's user on each (the identity sync's fan-out), and runs the fleet in P processes
(each under the open-file limit), every device on leaf i % N. Counts, on the hub, the version
each device reports on connecting (a subscriber on the bridge's account, as the platform's
bridge would see them), then pushes `--push` devices across the leaves from the hub on the
worker's account and counts their answers. Measures total RSS: simulator processes and
brokers. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.stack import pid_rss_mb, stat_cpu_seconds
from ota import protocol
from ota.broker_tier import BrokerTier, start_tier, stop_tier, write_tier
from ota.device.lean_mqtt import LeanConnection, LeanOptions, connect
from ota.device.simulator import FleetConfig, FleetOutcome, device_name
from ota.identity.accounts import ServiceRole, device_account, service_endpoint
from ota.identity.credentials import new_device_secret
from ota.identity.sync import sync_accounts
from ota.settings import Settings

PUSH_INFLIGHT = 100  # unacknowledged pushes at once (the hub's max_inflight_messages)
STOP_SECONDS = 300.0  # for every process to say its devices' goodbyes and report


class HubCounter:
    """Every inform the hub delivers, by device: what the platform's bridge would receive."""

    def __init__(self) -> None:
        self.informs: Counter[str] = Counter()
        self.conn: LeanConnection | None = None

    def on_message(self, topic: str, payload: bytes) -> None:
        self.informs[topic.rsplit("/", 1)[1]] += 1

    async def start(self, settings: Settings) -> None:
        endpoint = service_endpoint(settings, ServiceRole.BRIDGE)
        options = replace(LeanOptions.from_endpoint(endpoint), persistent=False)
        client_id = f"hub-counter-{uuid.uuid4().hex[:6]}"
        self.conn = await connect(
            options,
            client_id,
            self.on_message,
            username=endpoint.username,
            password=endpoint.password,
        )
        await self.conn.subscribe([protocol.inform_topic("+", "+")])


async def until(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def push_burst(settings: Settings, product_key: str, names: list[str], version: str) -> None:
    """A push to each of `names`, from the hub as the worker, for the version they run: each
    device answers with an inform (the SDK's duplicate rule) and downloads nothing."""
    endpoint = service_endpoint(settings, ServiceRole.WORKER)
    options = replace(LeanOptions.from_endpoint(endpoint), persistent=False)
    conn = await connect(
        options,
        f"push-burst-{uuid.uuid4().hex[:6]}",
        lambda topic, payload: None,
        username=endpoint.username,
        password=endpoint.password,
    )
    data = {
        "size": 1024,
        "version": version,
        "url": "http://127.0.0.1:9/never-fetched.bin",
        "sign": "0" * 32,
        "signMethod": "Md5",
        "md5": "0" * 32,
    }
    slots = asyncio.Semaphore(PUSH_INFLIGHT)

    async def push(i: int, name: str) -> None:
        async with slots:
            await conn.publish(
                protocol.upgrade_topic(product_key, name), protocol.encode_upgrade(data, i)
            )

    try:
        await asyncio.gather(*(push(i, n) for i, n in enumerate(names)))
    finally:
        conn.disconnect()


async def measure_tier(
    devices: int,
    leaves: int,
    processes: int,
    connect_rate: float,
    mqtt_protocol: str,
    pushes: int,
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="ota-sim-tier-"))
    settings = Settings(
        home=home,
        broker_auth="plugin",
        mqtt_service_secret=uuid.uuid4().hex,
        broker_timeout_seconds=600,
    )
    tier = write_tier(home, leaves, settings)
    start_tier(tier)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        pk = f"tier{uuid.uuid4().hex[:6]}"
        names = [device_name("sim-", i) for i in range(devices)]
        secrets = {n: new_device_secret() for n in names}
        started = time.monotonic()
        accounts = [device_account(pk, n, s) for n, s in secrets.items()]
        await asyncio.to_thread(sync_accounts, tier.settings, accounts)
        register_seconds = time.monotonic() - started
        del accounts
        idle = tier_rss_mb(tier)

        counter = HubCounter()
        await counter.start(tier.settings)
        cfg = FleetConfig(
            pk,
            devices,
            "1.0.0",
            mqtt_url=tier.leaf_urls[0],
            mqtt_urls=tuple(tier.leaf_urls),
            mqtt_protocol=mqtt_protocol,
            install_seconds=0,
        )
        per = -(-devices // processes)
        started = time.monotonic()
        for first in range(0, devices, per):
            count = min(per, devices - first)
            mine = {n: secrets[n] for n in names[first : first + count]}
            part = replace(
                cfg,
                first=first,
                count=count,
                seed=first,
                secrets=mine,
                connect_rate=connect_rate * count / devices,
            )
            worker = subprocess.Popen(
                [sys.executable, "-m", "bench.sim_slice"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert worker.stdin is not None
            worker.stdin.write(pickle.dumps(part))
            worker.stdin.close()
            worker.stdin = None  # written: communicate() must not flush it
            workers.append(worker)
        del secrets
        load_before = os.getloadavg()[0]
        await until(
            lambda: len(counter.informs) >= devices, 120 + devices / 50, "every device reported"
        )
        connect_seconds = time.monotonic() - started
        load_after = os.getloadavg()[0]
        await asyncio.sleep(2)  # a stray second inform would show now
        informs_at_connect = sum(counter.informs.values())
        cpu = {b.name: _cpu(b.process.pid) for b in tier.brokers if b.process}
        cpu |= {f"sim{i}": _cpu(w.pid) for i, w in enumerate(workers)}
        cpu["bench (registration, hub counter)"] = round(time.process_time(), 1)
        brokers = tier_rss_mb(tier)
        sims = {f"sim{i}": round(pid_rss_mb(w.pid), 1) for i, w in enumerate(workers)}
        total = sum(brokers.values()) + sum(sims.values())

        burst: dict[str, Any] = {}
        if pushes:
            indices = sorted(random.Random(0).sample(range(devices), min(pushes, devices)))
            pushed = [names[i] for i in indices]
            before = {n: counter.informs[n] for n in pushed}
            started = time.monotonic()
            await push_burst(tier.settings, pk, pushed, "1.0.0")
            published = time.monotonic() - started

            def answered() -> int:
                return sum(counter.informs[n] > before[n] for n in pushed)

            with contextlib.suppress(RuntimeError):
                await until(lambda: answered() >= len(pushed), 300, "every push answered")
            burst = {
                "devices": len(pushed),
                "leaves_reached": len({i % leaves for i in indices}),
                "answered": answered(),
                "published_seconds": round(published, 1),
                "answered_seconds": round(time.monotonic() - started, 1),
            }
        outcomes = await asyncio.to_thread(_stop, workers)
        fleet: Counter[str] = Counter()
        for outcome in outcomes:
            fleet.update(outcome.counts)
        return {
            "devices": devices,
            "leaves": leaves,
            "simulator_processes": len(workers),
            "mqtt_protocol": mqtt_protocol,
            "broker_auth": "plugin (ota_auth) on hub and every leaf",
            "register_seconds": round(register_seconds, 1),
            "connect_rate_per_s": connect_rate,
            "connect_seconds": round(connect_seconds, 1),
            # Connection attempts that failed (most: no CONNACK within the device's 30 s, the
            # machine saturated) and were retried with backoff, as a real device would.
            "failed_connect_attempts": fleet["disconnects"],
            "load_average_at_start_and_connected": [round(load_before, 1), round(load_after, 1)],
            # Registration, the connect storm and reports: where the machine's time went.
            "cpu_seconds_until_connected": cpu,
            "reported_at_hub": len(counter.informs),
            "informs_at_hub": informs_at_connect,
            "rss_mb": {"brokers": brokers, "brokers_idle": idle, "simulators": sims},
            "total_rss_mb": round(total, 1),
            "kb_per_device": round(total * 1024 / devices, 2),
            "push_burst": burst,
            "fleet": {k: fleet[k] for k in sorted(fleet)},
        }
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        stop_tier(tier)


def tier_rss_mb(tier: BrokerTier) -> dict[str, float]:
    return {b.name: round(pid_rss_mb(b.process.pid), 1) for b in tier.brokers if b.process}


def _cpu(pid: int) -> float:
    return round(stat_cpu_seconds(Path(f"/proc/{pid}/stat")) or 0.0, 1)


def _stop(workers: list[subprocess.Popen[bytes]]) -> list[FleetOutcome]:
    """SIGTERM each simulator process (each device says "offline" and leaves); their summaries."""
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    outcomes = []
    deadline = time.monotonic() + STOP_SECONDS
    for worker in workers:
        try:
            out, _ = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outcomes.append(pickle.loads(out))
        except (subprocess.TimeoutExpired, pickle.UnpicklingError, EOFError):
            worker.kill()
    return outcomes
