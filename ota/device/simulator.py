"""A simulated fleet: many devices multiplexed on one event loop a process, injected failures.

Each device (ota.device.sim_device) runs the SDK's update logic on a lean MQTT connection of
its own (ota.device.lean_mqtt, a few KB a device); one process holds tens of thousands, and
`run_fleet_processes` spreads a larger fleet over processes. Downloads share one HTTP client and
are hashed, never written. Each device "runs" `synth_image(module, version)` (one cached copy a
version), so differential packages made from those images apply; with `public_key` the devices
require signed updates (secure update). Connections are paced (`connect_rate`, with jitter).

What the devices saw is counted (SEEN: pushes, duplicates, downloads, connects...) along with
each update's push-to-install time; `run_fleet_processes` adds the processes' up and gives the
p50/p99 of those times.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import random
import resource
import signal
from array import array
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from ota import aio
from ota.device.lean_mqtt import ConnectRefused, LeanOptions
from ota.device.sdk import Device
from ota.device.sim_device import SimulatedDevice
from ota.device.sim_image import IMAGE_MIN, synth_image  # noqa: F401 (their home before)
from ota.domain import DEFAULT_MODULE
from ota.mqtt import MqttEndpoint
from ota.protocol import Upgrade

log = logging.getLogger(__name__)

DOWNLOADS_PER_PROCESS = 32
START_RATE = 500  # connections opened per second per process, unless `connect_rate` says
KEEPALIVE = 60  # seconds, as the SDK's
FILES_BESIDE_DEVICES = 200  # HTTP connections, the loop's own, logs...
RESULT_NAMES = {100: "updated", -1: "failed_update", -2: "failed_download"}
RESULT_NAMES |= {-3: "failed_verify", -4: "failed_install"}
# What the devices saw, in the summary: pushes (and duplicates among them: a version already
# run, or a push while updating), finished downloads, connections made and lost, refusals.
SEEN: tuple[str, ...] = ("pushes", "duplicates", "downloads", "download_retries", "connects")
SEEN += ("disconnects", "refused", "flaps", "dropped_reports")
AUTH_HINT = (
    "are the devices registered with their secrets (`ota simulate --register`), and"
    " OTA_BROKER_AUTH the broker's?"
)


@dataclass(frozen=True)
class FleetConfig:
    product_key: str
    devices: int
    version: str
    module: str = DEFAULT_MODULE
    prefix: str = "sim-"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # Several brokers (a broker tier's leaves, ota/broker_tier.py): device i of the fleet
    # connects to mqtt_urls[i % len(mqtt_urls)], always the same one. Empty: mqtt_url.
    mqtt_urls: tuple[str, ...] = ()
    mqtt_protocol: str = "5"
    fail_rate: float = 0.0  # -1
    download_fail_rate: float = 0.0  # -2
    verify_fail_rate: float = 0.0  # -3
    install_fail_rate: float = 0.0  # -4
    offline: int = 0  # the last N devices connect only after offline_delay
    offline_delay: float = 30.0
    install_seconds: float = 1.0
    duration: float | None = None  # None: until stopped
    first: int = 0  # this process's slice of the fleet: devices first .. first+count-1
    count: int | None = None
    session_expiry: int = 600
    seed: int | None = None
    public_key: str | None = None  # PEM: verify digestsign like a secure-update device
    image_size: int = 256 * 1024  # of the synthesized images differential packages apply to
    # Device name -> DeviceSecret (`device_secrets`), for a broker that authenticates devices.
    secrets: dict[str, str] | None = None
    # An mqtts:// broker: its CA, and a client certificate if it asks for one (every simulated
    # device shows the same: the broker's device identity is its password, not this).
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Where the fleet writes, when it stops, the versions each device runs ({name: {module:
    # version}}): what the devices believe, to hold the platform's records against (bench/faults).
    # A fleet split over processes writes one file per slice, the slice's first index appended.
    state_file: str | None = None
    connect_rate: float | None = None  # connections a second for this process; None: START_RATE
    flapping: int = 0  # the first N devices lose their connection now and then...
    flap_seconds: float = 60.0  # ...each about this often

    def names(self) -> list[str]:
        count = self.devices - self.first if self.count is None else self.count
        return [device_name(self.prefix, i) for i in range(self.first, self.first + count)]


def device_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}"


class Fleet:
    """One process's devices on one event loop, and what they saw (`stats`, `results`)."""

    def __init__(self, cfg: FleetConfig, http: httpx.AsyncClient | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.http = http
        self.endpoints = [
            MqttEndpoint.from_url(
                url,
                protocol=cfg.mqtt_protocol,
                ca_file=cfg.ca_file,
                cert_file=cfg.cert_file,
                key_file=cfg.key_file,
            )
            for url in cfg.mqtt_urls or (cfg.mqtt_url,)
        ]
        # One TLS context and one set of options a broker, for every connection of the fleet.
        self.mqtt_options = [
            LeanOptions.from_endpoint(e, keepalive=KEEPALIVE, session_expiry=cfg.session_expiry)
            for e in self.endpoints
        ]
        self.results: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()  # every device's counts, added up
        self.install_seconds = array("d")  # push to installed, one entry per update
        self.parsed_key: Any = None  # the product's public key, parsed once (secure update)
        self.devices: list[SimulatedDevice] = []
        self.stop = asyncio.Event()
        self.wake_late = asyncio.Event()
        self.download_slots = asyncio.Semaphore(DOWNLOADS_PER_PROCESS)
        self._next_turn = 0.0
        self._refusals_logged: set[str] = set()

    def record(self, device: Device, upgrade: Upgrade, code: int) -> None:
        self.results[RESULT_NAMES.get(code, f"code_{code}")] += 1

    def refused(self, device: SimulatedDevice, exc: ConnectRefused) -> None:
        """A refused CONNECT: counted, and said once per reason (not once per device)."""
        self.stats["refused"] += 1
        if exc.reason in self._refusals_logged:
            return
        self._refusals_logged.add(exc.reason)
        hint = f" ({AUTH_HINT})" if exc.auth else ""
        url = self.endpoints[device.broker].url
        log.error("%s on %s: %s%s", device.device_name, url, exc, hint)

    async def connect_turn(self) -> None:
        """Wait for this device's turn to connect: `connect_rate` a second for the fleet,
        each at a random point of its slot, so a fleet coming back (a broker restart) arrives
        as a steady stream, not a burst."""
        loop = asyncio.get_running_loop()
        gap = 1.0 / (self.cfg.connect_rate or START_RATE)
        now = loop.time()
        slot = max(now, self._next_turn)
        self._next_turn = slot + gap
        await asyncio.sleep(slot - now + self.rng.uniform(0, gap))

    async def run(self) -> Counter[str]:
        """Run until `duration` passes or `stop` is set; returns results and counts."""
        raise_open_files_limit(self.cfg.count or self.cfg.devices)
        own_http = self.http is None
        if own_http:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
            self.http = httpx.AsyncClient(timeout=60, limits=limits)
        tasks: list[asyncio.Task[None]] = []
        secrets = self.cfg.secrets or {}
        try:
            late_from = self.cfg.devices - self.cfg.offline
            brokers, first = len(self.endpoints), self.cfg.first
            self.devices = [
                SimulatedDevice(self, n, secrets.get(n), (first + i) % brokers)
                for i, n in enumerate(self.cfg.names())
            ]
            for i, device in enumerate(self.devices):
                late = self.cfg.first + i >= late_from
                tasks.append(asyncio.create_task(self._run_device(device, late)))
            flapping = self.devices[: max(0, self.cfg.flapping - self.cfg.first)]
            if flapping:
                tasks.append(asyncio.create_task(self._flap(flapping)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.cfg.duration)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own_http and self.http is not None:
                await self.http.aclose()
            self.write_state()
        summary = Counter(self.results)
        for name in SEEN:
            summary[name] = self.stats[name]
        summary["devices"] = len(self.devices)
        summary["connected_once"] = sum(1 for d in self.devices if d.connects)
        return summary

    def write_state(self) -> None:
        if self.cfg.state_file is None:
            return
        path = Path(self.cfg.state_file)
        if self.cfg.count is not None:  # one slice of a fleet split over processes
            path = path.with_name(f"{path.name}.{self.cfg.first}")
        state = {d.device_name: d.versions for d in self.devices}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)  # a reader never sees half a file

    async def _run_device(self, device: SimulatedDevice, late: bool) -> None:
        if late:  # until offline_delay passes or someone says now (SIGUSR1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake_late.wait(), self.cfg.offline_delay)
        await device.run()

    async def _flap(self, devices: list[SimulatedDevice]) -> None:
        """Drop a random one of `devices` at a time, each about every `flap_seconds`: their
        network flaps (no goodbye, the will says offline), and they reconnect as after any loss."""
        while True:
            pause = self.cfg.flap_seconds / len(devices)
            await asyncio.sleep(pause * self.rng.uniform(0.5, 1.5))
            device = self.rng.choice(devices)
            if device.is_connected:
                device.drop()
                self.stats["flaps"] += 1


def raise_open_files_limit(wanted: int) -> None:
    """Each device is a socket: raise the soft limit of open files to the hard one, and say
    so when even that is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if wanted + FILES_BESIDE_DEVICES > soft:
        log.warning(
            "%d devices in one process need %d open files, the limit is %d (ulimit -n):"
            " use more --processes or raise the limit",
            wanted, wanted + FILES_BESIDE_DEVICES, soft,
        )  # fmt: skip


def processes_for(devices: int) -> int:
    """The fewest processes whose sockets fit under the hard open-file limit, which an
    unprivileged process cannot raise: 6 for 100,000 devices at 20,000 (a tenth spare, for
    sockets a reconnect leaves closing)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1
    per = max(1, int((hard - FILES_BESIDE_DEVICES) * 0.9))
    return max(1, -(-devices // per))


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0..100) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class FleetOutcome:
    """One process's summary counts and its push-to-install times (pickled between processes)."""

    counts: dict[str, int]
    install_seconds: list[float]


def run_fleet(cfg: FleetConfig) -> FleetOutcome:
    """One process's fleet, until its duration ends or SIGINT/SIGTERM arrives."""

    async def main() -> FleetOutcome:
        fleet = Fleet(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, fleet.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, fleet.wake_late.set)
        counts = await fleet.run()
        return FleetOutcome(dict(counts), fleet.install_seconds.tolist())

    return aio.run(main())


def run_fleet_processes(cfg: FleetConfig, processes: int) -> dict[str, float]:
    """Split the fleet over `processes` processes; their counts added up, and the p50/p99 of
    push-to-install seconds over all (`install_p50_s`, `install_p99_s`; absent without one)."""
    outcomes = [run_fleet(cfg)] if processes <= 1 else _run_slices(cfg, processes)
    total: Counter[str] = Counter()
    seconds: list[float] = []
    for outcome in outcomes:
        total.update(outcome.counts)
        seconds += outcome.install_seconds
    summary: dict[str, float] = dict(total)
    for q in (50, 99):
        value = percentile(seconds, q)
        if value is not None:
            summary[f"install_p{q}_s"] = round(value, 3)
    return summary


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of forks that share this process's objects instead of each copying them.

    A fork shares every object of its parent (the CLI's imports, ~110 MB) until it writes
    one, and the collector writes each object it visits: frozen, they are never visited. At
    100,000 devices in 20 workers this is 1.6 GB of PSS instead of 2.5."""
    gc.freeze()
    return ProcessPoolExecutor(workers)


def _run_slices(cfg: FleetConfig, processes: int) -> list[FleetOutcome]:
    per = -(-cfg.devices // processes)
    rate = None if cfg.connect_rate is None else cfg.connect_rate / -(-cfg.devices // per)
    slices = [
        replace(
            cfg,
            first=i,
            count=min(per, cfg.devices - i),
            seed=(cfg.seed or 0) + i,
            connect_rate=rate,
        )
        for i in range(0, cfg.devices, per)
    ]
    # The workers stop on the terminal's Ctrl-C themselves; this process just waits for them.
    # `kill -USR1 -- -<process group>` wakes the late devices of every worker.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        with fork_pool(len(slices)) as pool:
            return list(pool.map(run_fleet, slices))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
