"""The device SDK: an asyncio OTA client a Linux device or gateway runs against our broker.

    device = Device("pk", "dn", mqtt_url="mqtt://broker:1883", versions={"default": "1.0.0"},
                    install=flash, download_dir=Path("/var/lib/ota"))
    await device.run()          # until cancelled; reconnects by itself

`install(path, upgrade)` flashes the verified file (path is None when `download_dir` is None: the
stream is then only hashed, as the simulator does); raising means flashing failed (-4).

Secure update: with `public_key` (the product's PEM), every update must carry a `digestsign`
that verifies (ota.signing), checked before a byte is downloaded; otherwise -3. Differential
packages (`isDiff`) are applied to `current_image` (a Path, or `f(module) -> bytes | Path`) and
the result checked against extData's targetSha256 before install gets the new image; -3 if not.

Downgrades: a push whose version is not newer than the module's (natural order) is refused with
progress -1 and the reason in desc, before anything is downloaded, unless its extData says
`"downgrade": true` (the platform does for a batch that goes back). The same version is
reported again, as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from ota import protocol, signing
from ota.device.download import (
    DownloadFailed,
    RetryPolicy,
    VerifyFailed,
    apply_diff,
    download,
    download_bytes,
    file_stem,
)
from ota.domain import DEFAULT_MODULE, is_newer
from ota.identity.credentials import device_credentials
from ota.mqtt import MqttEndpoint
from ota.protocol import EXT_DOWNGRADE, Upgrade

log = logging.getLogger(__name__)

InstallCallback = Callable[[Path | None, Upgrade], Awaitable[None]]
ResultCallback = Callable[["Device", Upgrade, int], None]  # code: 100 updated, or -1..-4
# The image a module runs now, for differential packages: a file, or a function of the module.
ImageSource = Path | Callable[[str], bytes | Path]

UPDATE_FAILED, DOWNLOAD_FAILED, VERIFY_FAILED, FLASH_FAILED = -1, -2, -3, -4
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0


class SecureUpdateError(VerifyFailed):
    """digestsign did not verify against the product's public key."""


class Device:
    """One device: its MQTT session, its versions per module, and its running updates."""

    def __init__(
        self,
        product_key: str,
        device_name: str,
        *,
        mqtt_url: str = "mqtt://127.0.0.1:1883",
        versions: dict[str, str] | str = "1.0.0",
        install: InstallCallback | None = None,
        download_dir: Path | None = None,
        http: httpx.AsyncClient | None = None,
        public_key: bytes | str | None = None,
        current_image: ImageSource | None = None,
        progress_every: int = 25,
        mqtt_protocol: str = "5",
        session_expiry: int = 3600,
        client_id: str | None = None,
        on_result: ResultCallback | None = None,
        device_secret: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        download_retry: RetryPolicy | None = None,
    ) -> None:
        """Credentials: `device_secret` (the triple: username, password and client id derived
        as Alibaba's SDKs do, ota.identity.credentials), or `username`/`password`/`client_id`
        as `ota device credentials` shows them. TLS: an mqtts:// URL, `ca_file` for a private
        CA, `cert_file`/`key_file` for a broker that asks for a client certificate.
        `download_retry`: how long a download rides out transient failures (a server or S3
        outage, a network flap) before it is reported failed (-2); five minutes by default."""
        self.product_key, self.device_name = product_key, device_name
        self.mqtt_url = mqtt_url
        endpoint = MqttEndpoint.from_url(
            mqtt_url,
            protocol=mqtt_protocol,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        if device_secret:
            creds = device_credentials(product_key, device_name, device_secret)
            endpoint = endpoint.with_credentials(creds.username, creds.password)
            client_id = client_id or creds.client_id
        elif username:
            endpoint = endpoint.with_credentials(username, password)
        self.endpoint = endpoint
        self.versions = {DEFAULT_MODULE: versions} if isinstance(versions, str) else dict(versions)
        self.install = install
        self.download_dir = download_dir
        self.http = http
        # Secure update (PROTOCOL.md): with a key, `verify_secure` must accept digestsign.
        # Settable: a key-rotation update hands the device its next key (docs/security.md).
        self.public_key = public_key
        self.current_image = current_image
        self._parsed_key: tuple[bytes | str, Any] | None = None
        self.progress_every = progress_every
        self.v5 = endpoint.v5
        self.session_expiry = session_expiry
        self.client_id = client_id or f"{product_key}&{device_name}"
        self.on_result = on_result
        self.download_retry = download_retry or RetryPolicy()
        self.connected = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self._client: aiomqtt.Client | None = None
        self._ids = itertools.count(1)
        self._updates: dict[str, asyncio.Task[int]] = {}  # module -> running update

    # -- topics ---------------------------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        return protocol.status_topic(self.product_key, self.device_name)

    def _next_id(self) -> str:
        return str(next(self._ids))

    # -- connection -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled; on cancel, say "offline" and leave cleanly."""
        backoff = BACKOFF_MIN
        while True:
            try:
                async with self._make_client() as client:
                    await self._on_connect(client)
                    backoff = BACKOFF_MIN
                    try:
                        async for message in client.messages:
                            self._on_message(message)
                    except asyncio.CancelledError:
                        await self._say_offline(client)
                        raise
            except aiomqtt.MqttError as exc:
                self.stats["disconnects"] += 1
                log.info("%s: broker connection lost (%s)", self.device_name, exc)
            finally:
                self.connected.clear()
                self._client = None
            # Jitter: a fleet that lost its broker must not come back in one burst.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _make_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.status_topic, protocol.OFFLINE, qos=1, retain=True)
        return self.endpoint.client(
            self.client_id,
            persistent=True,
            session_expiry=self.session_expiry,
            will=will,
            keepalive=60,
        )

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        pk, dn = self.product_key, self.device_name
        await client.subscribe(
            [(protocol.upgrade_topic(pk, dn), 1), (protocol.firmware_get_reply_topic(pk, dn), 1)]
        )
        await client.publish(self.status_topic, protocol.ONLINE, qos=1, retain=True)
        for module, version in self.versions.items():
            running = self._updates.get(module)
            if running is not None and not running.done():
                # A reconnect mid-update (a broker restart): the old version now would read as
                # a failed update (seed: in upgrade, any other version); the result follows.
                continue
            payload = protocol.encode_inform(self._next_id(), version, module)
            await client.publish(protocol.inform_topic(pk, dn), payload, qos=1)
        self._client = client
        self.connected.set()
        self.stats["connects"] += 1

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        # A clean DISCONNECT does not fire the last will, so say it ourselves.
        with contextlib.suppress(Exception):  # leaving anyway
            await client.publish(self.status_topic, protocol.OFFLINE, qos=1, retain=True, timeout=2)

    async def publish(self, topic: str, payload: bytes, must: bool = False) -> bool:
        """Publish at QoS 1; `must` waits for a connection, otherwise a report is dropped."""
        while True:
            client = self._client
            if client is None:
                if not must:
                    self.stats["dropped_reports"] += 1
                    return False
                await self.connected.wait()
                continue
            try:
                await client.publish(topic, payload, qos=1)
                return True
            except aiomqtt.MqttError:
                if not must:
                    self.stats["dropped_reports"] += 1
                    return False
                await asyncio.sleep(BACKOFF_MIN)

    # -- the OTA protocol -----------------------------------------------------------------------

    async def report_version(self, module: str = DEFAULT_MODULE) -> None:
        payload = protocol.encode_inform(self._next_id(), self.versions[module], module)
        await self.publish(protocol.inform_topic(self.product_key, self.device_name), payload, True)

    async def report_progress(
        self, step: int, desc: str = "", module: str = DEFAULT_MODULE
    ) -> None:
        payload = protocol.encode_progress(self._next_id(), step, desc, module)
        topic = protocol.progress_topic(self.product_key, self.device_name)
        await self.publish(topic, payload, must=step < 0 or step == 100)

    async def request_firmware(self, module: str = DEFAULT_MODULE) -> None:
        """Ask for a pending update (firmware/get); the reply starts it like a push."""
        payload = protocol.encode_firmware_get(self._next_id(), module)
        topic = protocol.firmware_get_topic(self.product_key, self.device_name)
        await self.publish(topic, payload, must=True)

    def _on_message(self, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        upgrade = protocol.parse_upgrade(payload)
        if upgrade is None or isinstance(upgrade, protocol.Rejected):
            return  # `{}` reply (nothing pending) or garbage (already logged)
        running = self._updates.get(upgrade.module)
        if running is not None and not running.done():
            log.info("%s: busy updating %s, ignoring a push", self.device_name, upgrade.module)
            return
        if upgrade.version == self.versions.get(upgrade.module):
            # Already there (e.g. pushed again after a lost report): say so again.
            asyncio.ensure_future(self.report_version(upgrade.module))
            return
        self._updates[upgrade.module] = asyncio.create_task(self.update(upgrade))

    async def update(self, upgrade: Upgrade) -> int:
        """Download, verify, install, report; returns 100 or the failure code it reported.
        A downgrade the push does not call intended is refused before a byte is fetched (-1)."""
        if (refusal := self.downgrade_refusal(upgrade)) is not None:
            log.warning("%s: %s", self.device_name, refusal)
            self.stats["downgrades_refused"] += 1
            return await self._finish(upgrade, UPDATE_FAILED, refusal)
        code = 100
        try:
            await self.report_progress(1, "downloading", upgrade.module)
            self.verify_secure(upgrade)  # before downloading anything an attacker may have sent
            fetched = await self.fetch(upgrade)
            if upgrade.is_diff:
                path = await self.apply_diff(upgrade, fetched)
            else:
                path = fetched if isinstance(fetched, Path) else None
            try:
                if self.install is not None:
                    await self.install(path, upgrade)
            except Exception as exc:
                log.warning("%s: install failed: %s", self.device_name, exc)
                code = FLASH_FAILED
            else:
                self.versions[upgrade.module] = upgrade.version
                await self.report_progress(100, "installed", upgrade.module)
                await self.report_version(upgrade.module)
        except DownloadFailed as exc:
            log.warning("%s: download failed: %s", self.device_name, exc)
            code = DOWNLOAD_FAILED
        except VerifyFailed as exc:
            log.warning("%s: verification failed: %s", self.device_name, exc)
            code = VERIFY_FAILED
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: update failed", self.device_name)
            code = UPDATE_FAILED
        return await self._finish(upgrade, code, "failed")

    async def _finish(self, upgrade: Upgrade, code: int, desc: str) -> int:
        if code < 0:
            await self.report_progress(code, desc, upgrade.module)
        self.stats[f"result_{code}"] += 1
        if self.on_result is not None:
            self.on_result(self, upgrade, code)
        return code

    def downgrade_refusal(self, upgrade: Upgrade) -> str | None:
        """Why a push must not be installed: its version is not newer than the module's, and
        the push does not say the downgrade is intended (extData `downgrade: true`, which the
        platform sets for a batch that goes back). The same version is no downgrade: a repeated
        push is answered with the version again (`_on_message`)."""
        current = self.versions.get(upgrade.module)
        if current is None or upgrade.version == current or upgrade.downgrade:
            return None
        if is_newer(upgrade.version, current):
            return None
        return (
            f"downgrade refused: {upgrade.version} is not newer than {current}"
            f" (extData.{EXT_DOWNGRADE} not set)"
        )

    async def fetch(self, upgrade: Upgrade) -> Path | bytes | None:
        """Download with resume, reporting coarse progress (every `progress_every` percent).
        A differential package without `download_dir` is kept in memory to be applied.

        Transient failures are retried (`download_retry`) without a report: the steps only tell
        bytes actually received, and a failure (-2) only once the download gives up; -2 at
        once for a 4xx, -3 for a complete file that does not match."""
        reported = 0

        async def progress(done: int, total: int) -> None:
            nonlocal reported
            step = done * 100 // total // self.progress_every * self.progress_every
            if reported < step < 100:
                reported = step
                await self.report_progress(step, "downloading", upgrade.module)

        def retrying(why: str, pause: float) -> None:
            self.stats["download_retries"] += 1

        stem = file_stem(upgrade)  # refuses names that would lead out of download_dir
        dest = None if self.download_dir is None else self.download_dir / f"{stem}.bin"
        options = {"on_progress": progress, "retry": self.download_retry, "on_retry": retrying}
        if self.http is not None:
            return await _download(self.http, upgrade, dest, options)
        async with httpx.AsyncClient(timeout=30) as http:
            return await _download(http, upgrade, dest, options)

    def verify_secure(self, upgrade: Upgrade) -> None:
        """Secure update: `upgrade.digestsign` must verify with `public_key` (PROTOCOL.md).

        Without a public key there is nothing to check. With one, a missing or wrong signature
        raises SecureUpdateError (-3).
        """
        if self.public_key is None:
            return
        if not upgrade.digestsign:
            raise SecureUpdateError("no digestsign, and this device requires signed updates")
        if not signing.verify_digestsign(self._public_key(), upgrade.sign, upgrade.digestsign):
            raise SecureUpdateError("digestsign does not verify with the product's public key")

    def _public_key(self) -> Any:
        """The parsed `public_key`, parsed again only when someone set a new one."""
        assert self.public_key is not None
        if self._parsed_key is None or self._parsed_key[0] != self.public_key:
            try:
                parsed = signing.load_public_key(self.public_key)
            except signing.SigningError as exc:
                raise SecureUpdateError(f"the configured public key is unusable: {exc}") from None
            self._parsed_key = (self.public_key, parsed)
        return self._parsed_key[1]

    async def apply_diff(self, upgrade: Upgrade, package: Path | bytes | None) -> Path | None:
        """The new image from `current_image` and the package, checked (VerifyFailed: -3).
        Written beside the download when there is a `download_dir`; install gets that path."""
        if package is None or self.current_image is None:
            raise RuntimeError("a differential package needs `current_image` to apply to")
        found = self.current_image
        source = found if isinstance(found, Path) else found(upgrade.module)
        old = await asyncio.to_thread(source.read_bytes) if isinstance(source, Path) else source
        patch = (
            await asyncio.to_thread(package.read_bytes) if isinstance(package, Path) else package
        )
        image = await asyncio.to_thread(apply_diff, old, patch, upgrade.ext_data)
        if self.download_dir is None:
            return None
        dest = self.download_dir / f"{file_stem(upgrade)}.img"
        await asyncio.to_thread(dest.write_bytes, image)
        return dest


async def _download(
    http: httpx.AsyncClient, upgrade: Upgrade, dest: Path | None, options: dict[str, Any]
) -> Path | bytes | None:
    if upgrade.is_diff and dest is None:
        return await download_bytes(http, upgrade, **options)
    return await download(http, upgrade, dest, **options)
