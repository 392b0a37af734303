"""The device SDK end to end: Mosquitto, the bridge, the download route, the database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.device.sdk import Device
from ota.protocol import Upgrade
from ota.push import upgrade_data
from ota.settings import Settings
from tests.linkkit.seed import Fleet, seed_fleet, tasks, versions
from tests.linkkit.servers import api_settings, serve_api
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until

CONTENT = os.urandom(1024 * 1024)


@dataclass
class Stack:
    settings: Settings
    engine: Engine
    fleet: Fleet
    bridge: Bridge
    recorder: Recorder

    def device(self, index: int, **kw: object) -> Device:
        results: asyncio.Queue[int] = asyncio.Queue()
        options: dict = {"versions": "1.0.0", "session_expiry": 60} | kw
        device = Device(
            self.fleet.product_key,
            self.fleet.names[index],
            mqtt_url=self.settings.mqtt_url,
            on_result=lambda _d, _u, code: results.put_nowait(code),
            **options,
        )
        device.results = results  # type: ignore[attr-defined]
        return device

    async def push(self, index: int, **change: object) -> None:
        f = self.fleet
        data = upgrade_data(self.settings, f.firmware, f.product_key, f.names[index]) | change
        topic = protocol.upgrade_topic(f.product_key, f.names[index])
        async with publisher(self.settings.mqtt_url) as client:
            await client.publish(topic, protocol.encode_upgrade(data, 1), qos=1)


@pytest.fixture
async def stack(tmp_path: Path, mqtt_url: str) -> AsyncIterator[Stack]:
    settings = api_settings(bridge_settings(tmp_path, mqtt_url))
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 4, content=CONTENT, store=ctx.store)
    recorder = Recorder()
    bridge = Bridge(settings, ctx.engine, recorder, session_expiry=60, products=[fleet.product_key])
    with serve_api(settings):
        async with running(bridge):
            yield Stack(settings, ctx.engine, fleet, bridge, recorder)
    ctx.engine.dispose()


@contextlib.asynccontextmanager
async def online(device: Device) -> AsyncIterator[Device]:
    task = asyncio.create_task(device.run())
    try:
        await asyncio.wait_for(device.connected.wait(), 10)
        yield device
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def watching(mqtt_url: str, topic: str) -> AsyncIterator[list[bytes]]:
    """Collects what is published on `topic` while the block runs."""
    seen: list[bytes] = []
    async with publisher(mqtt_url) as client:
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for m in client.messages:
                seen.append(bytes(m.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()


async def result(device: Device) -> int:
    return await asyncio.wait_for(device.results.get(), 30)  # type: ignore[attr-defined]


async def test_a_push_is_downloaded_verified_installed_and_reported(stack: Stack, tmp_path: Path):
    installed: list[tuple[Path | None, Upgrade, bytes]] = []

    async def install(path: Path | None, upgrade: Upgrade) -> None:
        assert path is not None
        installed.append((path, upgrade, path.read_bytes()))

    device = stack.device(0, install=install, download_dir=tmp_path / "dl")
    pk, dn = stack.fleet.product_key, stack.fleet.names[0]
    topic = protocol.progress_topic(pk, dn)
    async with watching(stack.settings.mqtt_url, topic) as progress, online(device):
        await stack.push(0)
        assert await result(device) == 100
        await until(lambda: stack.recorder.reports, what="the updated signal")
    (path, upgrade, data) = installed[0]
    assert data == CONTENT and upgrade.version == "2.0.0"
    assert not list((tmp_path / "dl").glob("*.part"))
    steps = [int(protocol.parse(protocol.progress_topic(pk, dn), p).step) for p in progress]  # type: ignore[union-attr]
    assert steps == [1, 25, 50, 75, 100]  # coarse: not one report per chunk
    assert device.versions == {"default": "2.0.0"}
    assert versions(stack.engine, pk)[dn] == "2.0.0"
    assert tasks(stack.engine, stack.fleet.batch_id)[dn].state == "updated"
    assert stack.recorder.reports[0][1:] == ("report", stack.recorder.reports[0][2])
    assert stack.recorder.reports[0][2].outcome == "updated"


async def test_request_firmware_fetches_the_pending_update(stack: Stack):
    paths: list[Path | None] = []

    async def install(path: Path | None, upgrade: Upgrade) -> None:
        paths.append(path)

    device = stack.device(1, install=install)  # no download_dir: hashed, never written
    async with online(device):
        await device.request_firmware()
        assert await result(device) == 100
    assert paths == [None]
    dn = stack.fleet.names[1]
    await until(lambda: tasks(stack.engine, stack.fleet.batch_id)[dn].state == "updated")


async def test_each_failure_reports_its_code(stack: Stack):
    async def broken_flash(path: Path | None, upgrade: Upgrade) -> None:
        raise OSError("flash write failed")

    bad_sign, bad_url, bad_flash = (stack.device(i) for i in range(3))
    bad_flash.install = broken_flash
    async with online(bad_sign), online(bad_url), online(bad_flash):
        await stack.push(0, sign="0" * 32, md5="0" * 32)
        await stack.push(1, url=f"{stack.settings.public_url}/download/1?sig=forged")
        await stack.push(2)
        codes = await asyncio.gather(result(bad_sign), result(bad_url), result(bad_flash))
        await until(lambda: len(stack.recorder.reports) == 3, what="three failure reports")
    assert codes == [-3, -2, -4]
    reasons = {wid.rsplit("-", 1)[-1]: arg.reason for wid, _name, arg in stack.recorder.reports}
    assert reasons == {
        "00000": "verify_failed",
        "00001": "download_failed",
        "00002": "flash_failed",
    }
    # Failures are the workflow's to write: the tasks only moved to in_upgrade (progress 1).
    assert {t.state for t in tasks(stack.engine, stack.fleet.batch_id).values()} == {
        "in_upgrade",
        "pushed",
    }
    assert all(d.versions == {"default": "1.0.0"} for d in (bad_sign, bad_url, bad_flash))


async def test_pushing_the_current_version_just_reports_it_again(stack: Stack):
    device = stack.device(3, versions="2.0.0")
    async with online(device):
        await stack.push(3)
        await until(lambda: stack.recorder.reports, what="the updated signal")
    assert device.stats["result_100"] == 0  # nothing downloaded
    assert tasks(stack.engine, stack.fleet.batch_id)[stack.fleet.names[3]].state == "updated"


def test_sha256_firmware_is_verified_too(tmp_path):
    content = b"x" * 5000
    engine = Context(Settings(home=tmp_path)).engine
    fleet = seed_fleet(engine, 1, sign_method="SHA256", content=content)
    data = upgrade_data(api_settings(Settings(home=tmp_path)), fleet.firmware, "pk", "dn")
    assert data["signMethod"] == "SHA256" and data["sign"] == hashlib.sha256(content).hexdigest()
    assert "md5" not in data


@pytest.mark.parametrize(
    "change",
    [
        {"module": "../../x"},
        {"version": "../../../x"},
        {"version": "2.0/x"},
        {"sign": "../../../x/" + "0" * 21},
    ],
)
async def test_a_push_naming_a_file_outside_the_download_folder_is_refused(tmp_path, change):
    """module, version and sign make the file's name: '/' or '..' in them must not lead out."""
    content = b"firmware image"
    upgrade = Upgrade("1", "2.0.0", "http://fw.test/f", len(content), _md5(content), "Md5")
    upgrade = dataclasses.replace(upgrade, **change)
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, content=content))
    installed: list[Path | None] = []

    async def install(path: Path | None, _upgrade: Upgrade) -> None:
        installed.append(path)

    folder = tmp_path / "a" / "b" / "dl"
    async with httpx.AsyncClient(transport=transport) as http:
        device = Device("pk", "dn", download_dir=folder, http=http, install=install)
        sent: list[bytes] = []

        async def publish(topic: str, payload: bytes, must: bool = False) -> bool:
            sent.append(payload)
            return True

        device.publish = publish  # type: ignore[method-assign]
        assert await device.update(upgrade) == -3
    assert installed == []
    assert [json.loads(p)["params"]["step"] for p in sent] == ["1", "-3"]
    assert list(tmp_path.rglob("*")) == []  # refused before a byte was fetched or written


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
