"""A simulated device: the SDK's update logic on a lean MQTT connection, failing as told.

SimulatedDevice inherits what a device does with a push from the SDK's Device (the downgrade
rule, secure update, download with Range resume, differential packages, the reports and their
failure codes), so the simulator and real devices cannot drift apart. What it sheds is the
weight: Device.__init__ (not called) builds an aiomqtt client, a Counter and an Event per
device; here the connection is ota.device.lean_mqtt's, and everything the devices of a fleet
share (HTTP client, public key, retry policy, counters) is read from the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ota import protocol
from ota.device.download import DownloadFailed, RetryPolicy, VerifyFailed
from ota.device.lean_mqtt import ConnectRefused, LeanConnection, MqttError, connect
from ota.device.sdk import BACKOFF_MAX, BACKOFF_MIN, Device
from ota.device.sim_image import synth_image
from ota.identity.credentials import device_credentials
from ota.protocol import Upgrade

if TYPE_CHECKING:
    import httpx

    from ota.device.simulator import Fleet

log = logging.getLogger(__name__)

GOODBYE_SECONDS = 2.0  # for the retained "offline" on the way out


class SimulatedDevice(Device):
    """One simulated device; `versions` is what it runs, `is_connected` whether it is online."""

    def __init__(  # noqa: D107
        self, fleet: Fleet, name: str, secret: str | None = None, broker: int = 0
    ) -> None:
        # Device.__init__ is skipped on purpose: see the module docstring.
        self.fleet = fleet
        self.broker = broker  # which of the fleet's brokers it connects to
        self.device_name = name
        self.secret = secret
        self.versions = {fleet.cfg.module: fleet.cfg.version}
        self.connects = 0
        self._msg_ids = 0  # an int, not the SDK's itertools.count
        self._conn: LeanConnection | None = None
        self._reconnected: asyncio.Future[None] | None = None  # made only when someone waits
        self._updates: dict[str, asyncio.Task[int]] = {}

    # -- what the SDK's methods read, shared by the fleet --------------------------------------

    @property
    def product_key(self) -> str:  # type: ignore[override]
        return self.fleet.cfg.product_key

    @property
    def stats(self) -> Counter[str]:  # type: ignore[override]
        return self.fleet.stats

    @property
    def http(self) -> httpx.AsyncClient | None:  # type: ignore[override]
        return self.fleet.http

    @property
    def public_key(self) -> str | None:  # type: ignore[override]
        return self.fleet.cfg.public_key

    @property
    def _parsed_key(self) -> Any:  # type: ignore[override]
        return self.fleet.parsed_key  # parsed once for the fleet, not once per device

    @_parsed_key.setter
    def _parsed_key(self, value: Any) -> None:
        self.fleet.parsed_key = value

    download_dir = None  # downloads are hashed, never written
    progress_every = 25
    download_retry = RetryPolicy()

    @property
    def on_result(self) -> Any:  # type: ignore[override]
        return self.fleet.record

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    def _next_id(self) -> str:
        self._msg_ids += 1
        return str(self._msg_ids)

    def current_image(self, module: str) -> bytes:  # type: ignore[override]
        return synth_image(module, self.versions[module], self.fleet.cfg.image_size)

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled, as Device.run: paced by the fleet, reconnecting
        with a growing, jittered pause; on cancel, say "offline" and leave cleanly."""
        backoff = BACKOFF_MIN
        while True:
            await self.fleet.connect_turn()
            conn = None
            try:
                conn = await self._connect()
                await self._on_connect(conn)
                backoff = BACKOFF_MIN
                try:
                    reason = await conn.closed  # no shield: a future less per device
                except asyncio.CancelledError:
                    await self._say_offline(conn)
                    raise
                self.stats["disconnects"] += 1
                log.info("%s: broker connection lost (%s)", self.device_name, reason)
            except ConnectRefused as exc:
                self.fleet.refused(self, exc)
            except (MqttError, OSError, TimeoutError) as exc:
                self.stats["disconnects"] += 1
                log.info("%s: broker connection lost (%s)", self.device_name, exc)
            finally:
                self._conn = None
                if conn is not None:
                    conn.abort()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connect(self) -> LeanConnection:
        pk, dn, endpoint = self.product_key, self.device_name, self.fleet.endpoints[self.broker]
        username, password = endpoint.username, endpoint.password
        client_id = f"{pk}&{dn}"
        if self.secret:
            creds = device_credentials(pk, dn, self.secret)
            username, password, client_id = creds.username, creds.password, creds.client_id
        return await connect(
            self.fleet.mqtt_options[self.broker],
            client_id,
            self._on_publish,
            username=username,
            password=password,
            will=(self.status_topic, protocol.OFFLINE),
        )

    async def _on_connect(self, conn: LeanConnection) -> None:  # type: ignore[override]
        pk, dn = self.product_key, self.device_name
        await conn.subscribe(
            [protocol.upgrade_topic(pk, dn), protocol.firmware_get_reply_topic(pk, dn)]
        )
        await conn.publish(self.status_topic, protocol.ONLINE, retain=True)
        for module, version in self.versions.items():
            running = self._updates.get(module)
            if running is not None and not running.done():
                continue  # reconnected mid-update: the result follows (Device._on_connect)
            payload = protocol.encode_inform(self._next_id(), version, module)
            await conn.publish(protocol.inform_topic(pk, dn), payload)
        self._conn = conn
        self.connects += 1
        self.stats["connects"] += 1
        if self._reconnected is not None:
            self._reconnected.set_result(None)
            self._reconnected = None

    async def _say_offline(self, conn: LeanConnection) -> None:  # type: ignore[override]
        # A clean DISCONNECT does not fire the last will, so say it ourselves.
        with contextlib.suppress(Exception):  # leaving anyway
            async with asyncio.timeout(GOODBYE_SECONDS):
                await conn.publish(self.status_topic, protocol.OFFLINE, retain=True)
        conn.disconnect()

    def drop(self) -> None:
        """Lose the connection without a goodbye (a flapping network): the will fires."""
        if self._conn is not None:
            self._conn.abort()

    async def publish(self, topic: str, payload: bytes, must: bool = False) -> bool:
        """As Device.publish: QoS 1; `must` waits for a connection, otherwise a report is
        dropped."""
        while True:
            conn = self._conn
            if conn is None:
                if not must:
                    self.stats["dropped_reports"] += 1
                    return False
                if self._reconnected is None:
                    self._reconnected = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._reconnected)
                continue
            try:
                await conn.publish(topic, payload)
                return True
            except MqttError:
                if not must:
                    self.stats["dropped_reports"] += 1
                    return False
                await asyncio.sleep(BACKOFF_MIN)

    # -- pushes --------------------------------------------------------------------------------

    def _on_publish(self, topic: str, payload: bytes) -> None:
        """Device._on_message, counting what the fleet reports: pushes, and duplicates (a push
        for the version already run, or one arriving while that module is updating)."""
        upgrade = protocol.parse_upgrade(payload)
        if upgrade is None or isinstance(upgrade, protocol.Rejected):
            return
        self.stats["pushes"] += 1
        running = self._updates.get(upgrade.module)
        if running is not None and not running.done():
            self.stats["duplicates"] += 1
            return
        if upgrade.version == self.versions.get(upgrade.module):
            self.stats["duplicates"] += 1
            asyncio.ensure_future(self.report_version(upgrade.module))
            return
        self._updates[upgrade.module] = asyncio.create_task(self._timed_update(upgrade))

    async def _timed_update(self, upgrade: Upgrade) -> int:
        pushed = time.monotonic()
        code = await self.update(upgrade)
        if code == 100:
            self.fleet.install_seconds.append(time.monotonic() - pushed)
        return code

    # -- injected failures ---------------------------------------------------------------------

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
        self.stats["downloads"] += 1
        if self._roll(cfg.verify_fail_rate):
            raise VerifyFailed("simulated checksum mismatch")
        return path

    async def install(self, path: Path | None, upgrade: Upgrade) -> None:  # type: ignore[override]
        cfg = self.fleet.cfg
        await asyncio.sleep(cfg.install_seconds * self.fleet.rng.uniform(0.5, 1.5))
        if self._roll(cfg.install_fail_rate):
            raise RuntimeError("simulated flash failure")
