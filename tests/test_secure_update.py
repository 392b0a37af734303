"""Secure update end to end: the real worker signs each push, the real bridge relays what devices
say to the real Temporal server, and SDK devices verify digestsign before installing.

A man in the middle sits between some devices and the platform: a relay from the shared
Mosquitto to a private one, rewriting pushes on the way. With retries off, a tampered file and a
tampered signature each end the task failed/verify_failed, and nothing is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ota import protocol, signing
from ota.bridge import Bridge
from ota.context import Context
from ota.contracts import BatchInput
from ota.device.sdk import Device
from ota.protocol import Upgrade
from ota.push import upgrade_data
from ota.services import security
from ota.services.batches import create_batch
from ota.services.firmware import add_firmware
from ota.services.products import add_product
from tests.linkkit.servers import api_settings, private_broker, serve_api
from tests.test_bridge import publisher, running
from tests.test_device_sdk import online
from tests.test_workflow_support import (
    eventually,
    make_context,
    make_fleet,
    running_worker,
    tasks_of,
)

FIRMWARE = b"\x7fELF" + bytes(range(256)) * 64
Tamper = Callable[[dict], dict | None]


@dataclass
class Platform:
    ctx: Context
    pk: str
    workdir: Path
    installed: dict[str, list[bytes]] = field(default_factory=dict)

    def add(self, content: bytes, version: str, **ext: str) -> int:
        fw = add_firmware(
            self.ctx.engine,
            self.ctx.store,
            self.ctx.settings,
            src=io.BytesIO(content),
            file_name=f"fw-{version}.bin",
            product_key=self.pk,
            name=f"fw_{version.replace('.', '_')}",
            version=version,
            need_verify=False,
            ext_data=ext,
        )
        assert fw.id is not None
        return fw.id

    def device(self, name: str, mqtt_url: str | None = None, **kw: object) -> Device:
        """An SDK device that records what it installs (and takes a new key from an image)."""
        self.installed[name] = []

        async def install(path: Path | None, upgrade: Upgrade) -> None:
            assert path is not None
            image = path.read_bytes()
            self.installed[name].append(image)
            if new_key := signing.find_public_key(image):
                device.public_key = (
                    new_key  # the rotation carrier: the next key, from a signed image
                )

        device = Device(
            self.pk,
            name,
            mqtt_url=mqtt_url or self.ctx.settings.mqtt_url,
            versions="1.0.0",
            session_expiry=60,
            install=install,
            download_dir=self.workdir / name,
            **kw,  # type: ignore[arg-type]
        )
        return device

    async def batch(self, firmware_id: int, source: str) -> str:
        created = await create_batch(self.ctx, BatchInput("", firmware_id, src_versions=[source]))
        return str(created["id"])

    async def final(self, batch_id: str, count: int) -> dict[str, tuple[str, str | None]]:
        """Each task's (state, reason) once all `count` are final."""

        def done() -> dict[str, tuple[str, str | None]] | None:
            tasks = tasks_of(self.ctx.engine, batch_id)
            states = {n: (t.state, t.reason) for n, t in tasks.items()}
            finals = [s for s, _ in states.values() if s in ("updated", "failed", "canceled")]
            return states if len(finals) == count == len(states) else None

        return await eventually(done, timeout=30)

    async def all_online(self, names: list[str]) -> None:
        from tests.linkkit.seed import devices

        await eventually(
            lambda: all(devices(self.ctx.engine, self.pk)[n].online for n in names), timeout=15
        )


@pytest.fixture
async def platform(tmp_path, mqtt_url, temporal_env) -> AsyncIterator[Platform]:
    """Worker, bridge and HTTP server in this process; a product with secure update on."""
    tag = uuid.uuid4().hex[:8]
    served = api_settings(make_context(tmp_path, mqtt_url, temporal_env.client).settings)
    ctx = make_context(
        tmp_path,
        mqtt_url,
        temporal_env.client,
        http_port=served.http_port,
        public_url=served.public_url,
        bridge_client_id=f"secure-bridge-{tag}",
        bridge_share_group=f"secure-{tag}",
        bridge_flush_seconds=0.1,
        key_encryption_secret="test-kek",
        batch_poll_seconds=0.5,
    )
    pk = f"sec{tag}"
    add_product(ctx.engine, pk, "Secure thermostat")
    security.set_secure_update(ctx.engine, ctx.settings, pk, True)
    bridge = Bridge(ctx.settings, ctx.engine, temporal_env.client, session_expiry=60, products=[pk])
    with serve_api(ctx.settings):
        async with running(bridge), running_worker(temporal_env.client, ctx):
            yield Platform(ctx, pk, tmp_path)
    ctx.engine.dispose()


@contextlib.asynccontextmanager
async def man_in_the_middle(
    mqtt_url: str, private_url: str, pk: str, tamper: dict[str, Tamper]
) -> AsyncIterator[list[dict]]:
    """Relays the devices named in `tamper` between the platform's broker and theirs, passing
    each push through its device's tamper function (None: dropped); firmware/get replies and
    what devices send are relayed unchanged. Yields the replies' data as they pass."""
    replies: list[dict] = []
    async with publisher(mqtt_url) as up, publisher(private_url) as down:
        await up.subscribe(
            [(protocol.upgrade_topic(pk, dn), 1) for dn in tamper]
            + [(protocol.firmware_get_reply_topic(pk, dn), 1) for dn in tamper]
        )
        await down.subscribe(
            [(f"/ota/device/{kind}/{pk}/+", 1) for kind in ("inform", "progress", "status")]
            + [(protocol.firmware_get_topic(pk, "+"), 1)]
        )

        async def downward() -> None:
            async for m in up.messages:
                topic = str(m.topic)
                body = json.loads(m.payload)  # type: ignore[arg-type]
                if topic.endswith("/get_reply"):
                    replies.append(body["data"])
                else:
                    data = tamper[topic.rsplit("/", 1)[-1]](body["data"])
                    if data is None:
                        continue
                    body["data"] = data
                await down.publish(topic, json.dumps(body).encode(), qos=1)

        async def upward() -> None:
            async for m in down.messages:
                await up.publish(str(m.topic), m.payload, qos=1)

        relays = [asyncio.create_task(downward()), asyncio.create_task(upward())]
        try:
            yield replies
        finally:
            for r in relays:
                r.cancel()


async def test_tampered_file_and_tampered_signature_fail_verify(platform: Platform, mqtt_url):
    p = platform
    fw = p.add(FIRMWARE, "2.0.0")
    # What the attacker serves instead: a file of their own, and its digest in the push.
    evil_pk = f"evil{uuid.uuid4().hex[:6]}"
    add_product(p.ctx.engine, evil_pk, "Attacker")
    evil = add_firmware(
        p.ctx.engine, p.ctx.store, p.ctx.settings, src=io.BytesIO(b"\x7fELF backdoor" * 99),
        file_name="evil.bin", product_key=evil_pk, name="evil_fw", version="2.0.0",
        need_verify=False,
    )  # fmt: skip
    evil_data = upgrade_data(p.ctx.settings, evil, evil_pk, "x")
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def swap_file(data: dict) -> dict:
        return data | {k: evil_data[k] for k in ("url", "size", "sign", "md5")}

    def forge_signature(data: dict) -> dict:
        return data | {"digestsign": signing.digestsign(attacker_key, data["sign"])}

    names = ["good", "file", "sig"]
    for n in names:
        make_fleet(p.ctx.engine, 1, product_key=p.pk, prefix=n, online=False)
    names = [f"{n}00000" for n in names]
    key = security.public_key(p.ctx.engine, p.pk)
    devices = [p.device(n, public_key=key) for n in names]
    with private_broker(p.workdir) as broker:
        behind = [p.device(n, mqtt_url=broker.url, public_key=key) for n in names[1:]]
        tamper = {names[1]: swap_file, names[2]: forge_signature}
        async with (
            man_in_the_middle(mqtt_url, broker.url, p.pk, tamper),
            online(devices[0]),
            online(behind[0]),
            online(behind[1]),
        ):
            await p.all_online(names)
            batch = await p.batch(fw, "1.0.0")
            states = await p.final(batch, 3)
    assert states == {
        names[0]: ("updated", None),
        names[1]: ("failed", "verify_failed"),
        names[2]: ("failed", "verify_failed"),
    }
    assert p.installed == {names[0]: [FIRMWARE], names[1]: [], names[2]: []}
    assert [d.stats["result_-3"] for d in behind] == [1, 1]
    assert not any((p.workdir / n).exists() for n in names[1:])  # refused before downloading


async def test_key_rotation_carrier_is_signed_with_the_old_key(platform: Platform):
    """docs/security.md's procedure: rotate, roll out the carrier signed with the previous key,
    then updates signed with the new key verify and the old key's no longer do."""
    p = platform
    make_fleet(p.ctx.engine, 1, product_key=p.pk, online=False)
    old = security.public_key(p.ctx.engine, p.pk)
    security.rotate_key(p.ctx.engine, p.ctx.settings, p.pk)
    new = security.public_key(p.ctx.engine, p.pk)
    carrier = FIRMWARE + b"\nkey store:\n" + new.encode()
    carrier_id = p.add(carrier, "2.0.0", _sign_with="previous")
    next_id = p.add(FIRMWARE + b"3", "3.0.0")
    stale_id = p.add(FIRMWARE + b"4", "4.0.0", _sign_with="previous")
    device = p.device("dev00000", public_key=old)
    async with online(device):
        await p.all_online(["dev00000"])
        first = await p.final(await p.batch(carrier_id, "1.0.0"), 1)
        assert first == {"dev00000": ("updated", None)}
        assert signing.fingerprint(device.public_key) == signing.fingerprint(new)  # type: ignore[arg-type]
        second = await p.final(await p.batch(next_id, "2.0.0"), 1)
        assert second == {"dev00000": ("updated", None)}
        third = await p.final(await p.batch(stale_id, "3.0.0"), 1)
        assert third == {"dev00000": ("failed", "verify_failed")}
    assert p.installed["dev00000"] == [carrier, FIRMWARE + b"3"]
    assert device.versions == {"default": "3.0.0"}


async def test_firmware_get_replies_are_signed_too(platform: Platform, mqtt_url):
    """Devices that missed the push ask for it (firmware/get): the bridge's reply carries the
    same digestsign; a device with another product's key refuses it."""
    p = platform
    fw = p.add(FIRMWARE, "2.0.0")
    for prefix in ("asks", "wrong"):
        make_fleet(p.ctx.engine, 1, product_key=p.pk, prefix=prefix, online=False)
    names = ["asks00000", "wrong00000"]
    key = security.public_key(p.ctx.engine, p.pk)
    other = signing.generate_key_pair().public_pem
    with private_broker(p.workdir) as broker:
        asks = p.device(names[0], mqtt_url=broker.url, public_key=key)
        wrong = p.device(names[1], mqtt_url=broker.url, public_key=other)
        lost = dict.fromkeys(names, lambda _data: None)  # every push is lost on the way
        async with (
            man_in_the_middle(mqtt_url, broker.url, p.pk, lost) as replies,
            online(asks),
            online(wrong),
        ):
            await p.all_online(names)
            batch = await p.batch(fw, "1.0.0")
            await eventually(
                lambda: {t.state for t in tasks_of(p.ctx.engine, batch).values()} == {"pushed"}
            )
            await asks.request_firmware()
            await wrong.request_firmware()
            states = await p.final(batch, 2)
    assert states == {names[0]: ("updated", None), names[1]: ("failed", "verify_failed")}
    assert p.installed == {names[0]: [FIRMWARE], names[1]: []}
    assert len(replies) == 2 and all(r["digestsign"] == replies[0]["digestsign"] for r in replies)
    public = signing.load_public_key(key)
    assert signing.verify_digestsign(public, replies[0]["sign"], replies[0]["digestsign"])
