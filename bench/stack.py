"""Processes of a clean benchmark stack: a fresh Temporal dev server, ota's worker and bridge."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ota.broker_tier import leaves_for, start_tier, write_tier
from ota.contracts import SEARCH_ATTRIBUTES
from ota.devstack import (
    TEMPORAL_DEV_TUNING,
    answers,
    free_port,
    mosquitto_binary,
    mosquitto_conf,
    venv_binary,
)
from ota.settings import Settings


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    peak_rss_mb: float = 0.0
    # CPU seconds of the process and its children, last seen per pid (children come and go).
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def pids(self) -> list[int]:
        """The process and its children (the simulator forks)."""
        return [self.popen.pid, *_children(self.popen.pid)]

    def rss_mb(self) -> float:
        return sum(pid_rss_mb(pid) for pid in self.pids())

    def pss_mb(self) -> float:
        """Memory with each shared page divided among its sharers: what a forking process and
        its children take together. RSS counts the pages a child shares with its parent once in
        each: the simulator's 20 forks at 100,000 devices read 4.0 GB of RSS, 1.6 GB of PSS."""
        return sum(_pss_mb(pid) for pid in self.pids())

    def sample(self) -> None:
        """Track peak RSS and CPU time of the process and its children."""
        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
        for pid in self.pids():
            if (cpu := stat_cpu_seconds(Path(f"/proc/{pid}/stat"))) is not None:
                self.cpu_by_pid[pid] = cpu

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid.values())


@dataclass
class BenchStack:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    temporal_port: int = 0
    metrics_port: int = 0

    def start(
        self,
        name: str,
        argv: list[str],
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (lives with the process)
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, **(extra_env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        proc = Proc(name, popen)
        self.procs.append(proc)
        return proc

    def start_temporal(self) -> Proc:
        self.temporal_port, self.metrics_port = free_port(), free_port()
        argv = [
            venv_binary("temporal") or "temporal",
            "server", "start-dev", "--headless",
            "--ip", "127.0.0.1", "--port", str(self.temporal_port),
            "--http-port", str(free_port()), "--metrics-port", str(self.metrics_port),
            "--db-filename", str(self.workdir / "temporal.db"),
            *TEMPORAL_DEV_TUNING,
            "--log-level", "error",
        ]  # fmt: skip
        for key in SEARCH_ATTRIBUTES:
            argv += ["--search-attribute", f"{key.name}=Keyword"]
        proc = self.start("temporal", argv)
        deadline = time.monotonic() + 60
        while not answers("127.0.0.1", self.temporal_port):
            if time.monotonic() > deadline or popen_dead(proc):
                raise RuntimeError(f"temporal did not start; see {self.workdir}/temporal.log")
            time.sleep(0.2)
        self.env["OTA_TEMPORAL_ADDRESS"] = f"127.0.0.1:{self.temporal_port}"
        return proc

    def start_mosquitto(self, settings: Settings) -> str:
        """A broker of our own, enforcing device identity as a deployment's does (the machine's
        keeps at most 1,000 queued messages per session, fewer than a large fleet's reports at
        once). Returns its URL."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("the benchmark needs mosquitto (apt-get install mosquitto)")
        port = free_port()
        conf = mosquitto_conf(self.workdir, "127.0.0.1", port, settings)
        self.start("mosquitto", [binary, "-c", str(conf)])
        deadline = time.monotonic() + 20
        while not answers("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start; see {self.workdir}/mosquitto.log")
            time.sleep(0.1)
        return f"mqtt://127.0.0.1:{port}"

    def start_brokers(self, settings: Settings, devices: int) -> str:
        """One Mosquitto (`start_mosquitto`), or past one broker's share of devices a broker
        tier (ota/broker_tier.py): its hub and leaves are components of the stack, and the
        platform's processes get the leaves as OTA_BROKER_LEAF_URLS (registration writes every
        device's user to each; `ota simulate` spreads the devices over them). Returns the URL
        the platform connects to."""
        leaves = leaves_for(devices)
        if not leaves:
            return self.start_mosquitto(settings)
        tier = write_tier(self.workdir / "brokers", leaves, settings)
        start_tier(tier)
        for broker in tier.brokers:
            assert broker.process is not None
            self.procs.append(Proc(f"mosquitto-{broker.name}", broker.process))
        self.env["OTA_BROKER_LEAF_URLS"] = ",".join(tier.leaf_urls)
        return tier.hub.url

    def sample(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.sample()

    def rss_mb(self) -> dict[str, float]:
        """Resident memory now, by component: when it grows tells what grows it."""
        return {p.name: round(p.rss_mb(), 1) for p in self.procs if p.popen.poll() is None}

    def pss_mb(self) -> dict[str, float]:
        """Proportional memory now, by component (read on demand: walking every page table
        twice a second would take CPU from what the benchmark measures)."""
        return {p.name: round(p.pss_mb(), 1) for p in self.procs if p.popen.poll() is None}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far, by component (sampled now)."""
        self.sample()
        return {p.name: p.cpu_seconds for p in self.procs}

    def stop(self, name: str | None = None) -> None:
        for proc in reversed(self.procs):
            if (name is None or proc.name == name) and proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGINT)
        for proc in reversed(self.procs):
            if name is None or proc.name == name:
                try:
                    proc.popen.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait()


def popen_dead(proc: Proc) -> bool:
    return proc.popen.poll() is not None


def pid_rss_mb(pid: int) -> float:
    """Resident memory of one process (0 once it is gone)."""
    return _proc_mb(Path(f"/proc/{pid}/status"), "VmRSS:")


def _pss_mb(pid: int) -> float:
    return _proc_mb(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")


def _proc_mb(path: Path, field: str) -> float:
    """The `field: N kB` line of a /proc file, in MB (0 once the process is gone)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stat_cpu_seconds(stat: Path) -> float | None:
    """User + system CPU time in a /proc/PID/stat or /proc/PID/task/TID/stat file (fields 14
    and 15, in clock ticks); None once the process or thread is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            for kid in kids:
                out += [int(kid), *_children(int(kid))]
    except OSError:
        pass
    return out
