"""A broker tier: leaf Mosquittos hold the devices, each bridged to one hub the platform uses.

Why: a Mosquitto holds one open file per connection, and a process may open only so many
(`ulimit -Hn`: 20,000 on the benchmark machine, and raising it needs CAP_SYS_RESOURCE). Past one
broker's share, fleets put brokers side by side: devices connect to a leaf (at most
`LEAF_DEVICES` each), and every leaf keeps one bridge connection to the hub, where the platform's
bridge and worker connect, on their service accounts, as to a single broker.

The bridge's topic rules go one way each, so nothing loops: a device's reports and requests
(`UP`) go from its leaf to the hub, and the platform's pushes and replies (`DOWN`) from the hub
to every leaf, which delivers them to the device if it holds it. Every leaf enforces device
identity with the same plugin and the same users as the hub: the identity sync (`ota broker
sync`, registration) writes them to OTA_MQTT_URL and to each of OTA_BROKER_LEAF_URLS. A leaf
signs in to the hub as the `ota-leaf` service, which may publish `UP` and subscribe to `DOWN`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ota import protocol
from ota.devstack import answers, free_port, mosquitto_binary, mosquitto_conf
from ota.identity.accounts import ServiceRole, service_account, service_password
from ota.identity.plugin_build import build_plugin
from ota.identity.sync import sync_accounts
from ota.settings import Settings

# Devices per leaf: under a 20,000 open-file limit, with room for reconnect overlap (a dropped
# device's old socket may linger until its keepalive ends) and the broker's own files.
LEAF_DEVICES = 15_000
QOS = 1  # what the platform publishes at, and what devices report at (PROTOCOL.md)

# Device -> platform (reports, status, firmware/get), and platform -> device (the worker's
# pushes, the bridge's replies to firmware/get): the leaves' bridge rules, one way each.
UP = protocol.DEVICE_TO_PLATFORM
DOWN = protocol.PLATFORM_TO_DEVICE


def leaves_for(devices: int, per_leaf: int = LEAF_DEVICES) -> int:
    """How many leaves a fleet of `devices` needs (0: one broker is enough, no tier)."""
    return 0 if devices <= per_leaf else math.ceil(devices / per_leaf)


def leaf_bridge_name(index: int) -> str:
    """A leaf's bridge connection: its name, and its client id on the hub."""
    return f"ota-leaf-{index}"


def bridge_lines(name: str, hub: str, password: str) -> str:
    """A leaf's bridge to the hub (`hub` host:port): one persistent session as `ota-leaf`,
    `UP` out and `DOWN` in, at QoS 1."""
    lines = [
        # A leaf keeps nothing the fleet needs: a leaf that restarts drops every device on it,
        # and each reports its version on connecting again, while pushes wait in the leaf's
        # session at the hub. And Mosquitto 2.0.11 (Debian 12's) that restores a bridge's
        # session from its file forwards no report up again, found by killing a leaf mid-batch
        # (tests/test_e2e_tier_crash.py: 4 runs of 5). Last in the file, this line wins.
        "persistence false",
        f"connection {name}",
        f"address {hub}",
        f"remote_clientid {name}",
        f"remote_username {ServiceRole.LEAF.value}",
        f"remote_password {password}",
        # Reports queue on the leaf while the hub is away, and pushes on the hub while the leaf
        # is: both sides keep the bridge's session.
        "cleansession false",
        # The hub accepts no topics outside the rules below ($SYS included).
        "notifications_local_only true",
        "restart_timeout 1 5",  # back soon after the hub, or its users, come up
    ]
    lines += [f"topic {t} out {QOS}" for t in UP]
    lines += [f"topic {t} in {QOS}" for t in DOWN]
    return "\n".join(lines) + "\n"


@dataclass
class Broker:
    name: str
    port: int
    home: Path
    conf: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@dataclass
class BrokerTier:
    """A hub and its leaves on this machine, with device identity on each (benchmark, tests)."""

    hub: Broker
    leaves: list[Broker]
    settings: Settings  # the platform's: OTA_MQTT_URL the hub, OTA_BROKER_LEAF_URLS the leaves
    env: dict[str, str] = field(default_factory=dict)  # the same, for processes we start

    @property
    def brokers(self) -> list[Broker]:
        return [self.hub, *self.leaves]

    @property
    def leaf_urls(self) -> list[str]:
        return [leaf.url for leaf in self.leaves]


def write_tier(home: Path, leaves: int, settings: Settings, host: str = "127.0.0.1") -> BrokerTier:
    """Configurations for a hub and `leaves` leaves under `home` (one folder each), on free
    ports; `settings` give the service secret and OTA_BROKER_AUTH (plugin or dynsec)."""
    if leaves < 1:
        raise ValueError("leaves: a tier has at least one leaf")
    if settings.broker_auth == "none":
        raise ValueError("broker_auth: a tier enforces device identity on every leaf (plugin)")
    hub_port = free_port()
    leaf_ports = [free_port() for _ in range(leaves)]
    leaf_urls = ",".join(f"mqtt://{host}:{p}" for p in leaf_ports)
    tier_settings = settings.model_copy(
        update={"mqtt_url": f"mqtt://{host}:{hub_port}", "broker_leaf_urls": leaf_urls}
    )
    plugin = build_plugin(home / "hub" / "mosquitto") if settings.broker_auth == "plugin" else None
    hub = _broker(home, "hub", host, hub_port, tier_settings, plugin)
    password = service_password(tier_settings, ServiceRole.LEAF)
    tier_leaves = []
    for i, port in enumerate(leaf_ports):
        leaf = _broker(home, f"leaf{i}", host, port, tier_settings, plugin)
        with leaf.conf.open("a") as f:
            f.write(bridge_lines(leaf_bridge_name(i), f"{host}:{hub_port}", password))
        tier_leaves.append(leaf)
    env = {
        "OTA_MQTT_URL": hub.url,
        "OTA_BROKER_LEAF_URLS": leaf_urls,
        "OTA_BROKER_AUTH": settings.broker_auth,
    }
    return BrokerTier(hub, tier_leaves, tier_settings, env)


def _broker(
    home: Path, name: str, host: str, port: int, settings: Settings, plugin: Path | None
) -> Broker:
    folder = home / name
    if plugin is not None and plugin.parent != folder / "mosquitto":  # built once, for all
        (folder / "mosquitto").mkdir(parents=True, exist_ok=True)
        shutil.copy2(plugin, folder / "mosquitto" / plugin.name)
    conf = mosquitto_conf(folder, host, port, settings)
    conf.chmod(0o600)  # a leaf's holds the password it signs in to the hub with
    return Broker(name, port, folder, conf)


def start_tier(tier: BrokerTier, timeout: float = 30.0) -> None:
    """Start the hub, then the leaves; give each the services' accounts (`ota broker sync`
    does too) and wait until every leaf's bridge is connected (a push published before would
    reach no leaf)."""
    try:
        _start(tier, timeout)
    except BaseException:
        stop_tier(tier)
        raise


def launch(broker: Broker) -> None:
    """Run `broker`'s configuration (again, after a crash: on the same port and files), logging
    to its folder; `answers` says when it listens."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("a broker tier needs mosquitto (apt-get install mosquitto)")
    with (broker.home / "mosquitto.log").open("ab") as log:
        broker.process = subprocess.Popen(
            [binary, "-c", str(broker.conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _start(tier: BrokerTier, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for group in ([tier.hub], tier.leaves):
        for broker in group:
            launch(broker)
        for broker in group:
            _wait(broker, deadline, partial(answers, "127.0.0.1", broker.port), "did not start")
    # The services' accounts, the leaves' among them: until the hub has it, no leaf bridges.
    roles = (ServiceRole.BRIDGE, ServiceRole.WORKER, ServiceRole.LEAF)
    sync_accounts(tier.settings, [service_account(tier.settings, r) for r in roles])
    hub_log = tier.hub.home / "mosquitto.log"
    for i, leaf in enumerate(tier.leaves):
        _wait(leaf, deadline, partial(_bridged, hub_log, i), "did not bridge to the hub")


def _bridged(hub_log: Path, index: int) -> bool:
    """Whether the hub accepted leaf `index`'s bridge: it logs each bridge it accepts, and
    nothing else on it says so to a client without an account for $SYS."""
    name = f" as {leaf_bridge_name(index)} ".encode()
    return any(
        b"New bridge connected" in line and name in line
        for line in hub_log.read_bytes().splitlines()
    )


def _wait(broker: Broker, deadline: float, ready: Callable[[], bool], what: str) -> None:
    while not ready():
        assert broker.process is not None
        if broker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{broker.name} {what}; see {broker.home}/mosquitto.log")
        time.sleep(0.1)


def stop_tier(tier: BrokerTier) -> None:
    for broker in reversed(tier.brokers):
        if broker.process is not None and broker.process.poll() is None:
            broker.process.terminate()
    for broker in tier.brokers:
        if broker.process is None:
            continue
        try:
            broker.process.wait(10)
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait()
