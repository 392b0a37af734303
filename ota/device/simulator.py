"""A simulated fleet: N devices on the SDK, each its own MQTT connection, with injected failures.

One process holds several hundred devices (one shared HTTP client, downloads hashed, never
written); `run_fleet_processes` spreads a larger fleet over processes. Each device "runs"
`synth_image(module, version)`, so differential packages made from those images apply; with
`public_key` the devices require signed updates (secure update).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import signal
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from ota import aio
from ota.device.download import DownloadFailed, VerifyFailed
from ota.device.sdk import Device
from ota.domain import DEFAULT_MODULE
from ota.protocol import Upgrade

log = logging.getLogger(__name__)

DOWNLOADS_PER_PROCESS = 32
START_RATE = 200  # connections opened per second per process: no SYN storm on the broker
RESULT_NAMES = {100: "updated", -1: "failed_update", -2: "failed_download"}
RESULT_NAMES |= {-3: "failed_verify", -4: "failed_install"}


@dataclass(frozen=True)
class FleetConfig:
    product_key: str
    devices: int
    version: str
    module: str = DEFAULT_MODULE
    prefix: str = "sim-"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
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

    def names(self) -> list[str]:
        count = self.devices - self.first if self.count is None else self.count
        return [device_name(self.prefix, i) for i in range(self.first, self.first + count)]


def device_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}"


IMAGE_CHANGES = 8  # regions a version rewrites: localized changes, as between two real builds
IMAGE_CHANGE_BYTES = 512


IMAGE_MIN = 4096


@functools.lru_cache(maxsize=16)
def synth_image(module: str, version: str, size: int = 256 * 1024) -> bytes:
    """A deterministic pseudo-firmware: a base per module with a few regions rewritten per
    version, so two versions differ the way two builds do and a diff between them is small.
    Upload two of them (`ota simulate` devices run them) to try differential packages."""
    size = max(size, IMAGE_MIN)
    image = bytearray(random.Random(f"image:{module}").randbytes(size))
    rng = random.Random(f"image:{module}:{version}")
    for _ in range(IMAGE_CHANGES):
        at = rng.randrange(0, size - IMAGE_CHANGE_BYTES)
        image[at : at + IMAGE_CHANGE_BYTES] = rng.randbytes(IMAGE_CHANGE_BYTES)
    # Real images carry their version, and often a checksum trailer over the rest.
    tag = f"ota-sim {module} {version}".encode()[:256]
    image[: len(tag)] = tag
    image[-32:] = hashlib.sha256(image[:-32]).digest()
    return bytes(image)


class SimulatedDevice(Device):
    """A Device whose download and install fail as often as the fleet says."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        cfg = fleet.cfg
        super().__init__(
            cfg.product_key,
            name,
            mqtt_url=cfg.mqtt_url,
            versions={cfg.module: cfg.version},
            install=self._install,
            http=fleet.http,
            mqtt_protocol=cfg.mqtt_protocol,
            session_expiry=cfg.session_expiry,
            on_result=fleet.record,
            public_key=cfg.public_key,
            current_image=self._image,
            device_secret=(cfg.secrets or {}).get(name),
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )
        self.fleet = fleet

    def _image(self, module: str) -> bytes:
        return synth_image(module, self.versions[module], self.fleet.cfg.image_size)

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self.fleet.rng.random() < rate

    async def fetch(self, upgrade: Upgrade) -> Path | bytes | None:
        cfg = self.fleet.cfg
        if self._roll(cfg.fail_rate):
            raise RuntimeError("simulated failure")
        if self._roll(cfg.download_fail_rate):
            raise DownloadFailed("simulated download failure")
        # Few downloads at a time: httpx's pool gets slow (quadratic) with a long queue.
        async with self.fleet.download_slots:
            path = await super().fetch(upgrade)
        if self._roll(cfg.verify_fail_rate):
            raise VerifyFailed("simulated checksum mismatch")
        return path

    async def _install(self, path: Path | None, upgrade: Upgrade) -> None:
        cfg = self.fleet.cfg
        await asyncio.sleep(cfg.install_seconds * self.fleet.rng.uniform(0.5, 1.5))
        if self._roll(cfg.install_fail_rate):
            raise RuntimeError("simulated flash failure")


class Fleet:
    def __init__(self, cfg: FleetConfig, http: httpx.AsyncClient | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.http = http
        self.results: Counter[str] = Counter()
        self.devices: list[SimulatedDevice] = []
        self.stop = asyncio.Event()
        self.wake_late = asyncio.Event()
        self.download_slots = asyncio.Semaphore(DOWNLOADS_PER_PROCESS)

    def record(self, device: Device, upgrade: Upgrade, code: int) -> None:
        self.results[RESULT_NAMES.get(code, f"code_{code}")] += 1

    async def run(self) -> Counter[str]:
        """Run until `duration` passes or `stop` is set; returns results and connection counts."""
        own_http = self.http is None
        if own_http:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
            self.http = httpx.AsyncClient(timeout=60, limits=limits)
        tasks: list[asyncio.Task[None]] = []
        try:
            names = self.cfg.names()
            late_from = self.cfg.devices - self.cfg.offline
            self.devices = [SimulatedDevice(self, n) for n in names]
            for i, device in enumerate(self.devices):
                late = self.cfg.first + i >= late_from
                tasks.append(asyncio.create_task(self._run_device(device, late)))
                if i % START_RATE == START_RATE - 1:
                    await asyncio.sleep(1)
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
        summary["devices"] = len(self.devices)
        summary["connected_once"] = sum(1 for d in self.devices if d.stats["connects"])
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


def run_fleet(cfg: FleetConfig) -> dict[str, int]:
    """One process's fleet, until its duration ends or SIGINT/SIGTERM arrives."""

    async def main() -> Counter[str]:
        fleet = Fleet(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, fleet.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, fleet.wake_late.set)
        return await fleet.run()

    return dict(aio.run(main()))


def run_fleet_processes(cfg: FleetConfig, processes: int) -> dict[str, int]:
    """Split the fleet over `processes` processes and add up their summaries."""
    if processes <= 1:
        return run_fleet(cfg)
    per = -(-cfg.devices // processes)
    slices = [
        replace(cfg, first=i, count=min(per, cfg.devices - i), seed=(cfg.seed or 0) + i)
        for i in range(0, cfg.devices, per)
    ]
    # The workers stop on the terminal's Ctrl-C themselves; this process just waits for them.
    # `kill -USR1 -- -<process group>` wakes the late devices of every worker.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        with ProcessPoolExecutor(len(slices)) as pool:
            summaries = list(pool.map(run_fleet, slices))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    total: Counter[str] = Counter()
    for s in summaries:
        total.update(s)
    return dict(total)
