"""Downgrade protection: our SDK refuses a push that is not newer than what the module runs unless
the push says the downgrade is intended (extData), and the platform says so for a batch whose
firmware sorts before the devices' version."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from ota import protocol
from ota.bridge.records import apply_reports
from ota.device.sdk import Device
from ota.domain import is_newer
from ota.protocol import EXT_DOWNGRADE, FirmwareGet, Upgrade
from ota.push import upgrade_data
from ota.settings import Settings
from tests.linkkit.seed import seed_fleet
from tests.test_device_sdk import online
from tests.test_secure_update import Platform, platform  # noqa: F401  (the fixture)
from tests.test_workflow_support import make_fleet

SIGN = "0" * 32


def test_versions_compare_in_natural_order():
    assert is_newer("1.10.0", "1.9.0") and is_newer("2.0.0", "1.99") and is_newer("1.0.1", "1.0")
    assert not is_newer("1.0.0", "1.0.0") and not is_newer("1.9.0", "1.10.0")


class Pushed:
    """An SDK device on 2.0.0 with its broker and download replaced by recorders."""

    def __init__(self) -> None:
        self.device = Device("pk", "dn", versions="2.0.0", install=self.install)
        self.device.publish = self.publish  # type: ignore[method-assign]
        self.device.fetch = self.fetch  # type: ignore[method-assign]
        self.fetched: list[str] = []
        self.installed: list[str] = []
        self.sent: list[protocol.Message] = []

    async def publish(self, topic: str, payload: bytes, must: bool = False) -> bool:
        parsed = protocol.parse(topic, payload)
        assert parsed is not None and not isinstance(parsed, protocol.Rejected)
        self.sent.append(parsed)
        return True

    async def fetch(self, upgrade: Upgrade) -> None:
        self.fetched.append(upgrade.version)

    async def install(self, path: Path | None, upgrade: Upgrade) -> None:
        self.installed.append(upgrade.version)

    async def push(self, version: str, **ext: object) -> int | None:
        """Deliver a push as the broker would; the update's code, or None if none started."""
        data = {"size": 10, "version": version, "url": "http://x/fw.bin", "sign": SIGN}
        data |= {"signMethod": "Md5", "md5": SIGN} | ({"extData": ext} if ext else {})
        self.device._on_message(SimpleNamespace(payload=protocol.encode_upgrade(data, 1)))  # type: ignore[arg-type]
        running = self.device._updates.get("default")
        await asyncio.sleep(0)  # a repeated push's report is sent from a task of its own
        return await running if running is not None else None


async def test_an_older_push_is_refused_and_nothing_is_downloaded():
    p = Pushed()
    assert await p.push("1.0.0", note="a user tag") == -1
    assert p.fetched == p.installed == [] and p.device.versions == {"default": "2.0.0"}
    (report,) = p.sent
    assert isinstance(report, protocol.Progress) and report.step == -1
    assert (
        report.desc
        == "downgrade refused: 1.0.0 is not newer than 2.0.0 (extData.downgrade not set)"
    )
    assert p.device.stats["downgrades_refused"] == 1


async def test_an_older_push_marked_as_intended_is_installed():
    p = Pushed()
    assert await p.push("1.0.0", **{EXT_DOWNGRADE: True}) == 100
    assert p.fetched == p.installed == ["1.0.0"] and p.device.versions == {"default": "1.0.0"}
    assert isinstance(p.sent[-1], protocol.Inform) and p.sent[-1].version == "1.0.0"


@pytest.mark.parametrize("value", ["true", 1, "yes"])
async def test_only_json_true_marks_a_downgrade(value: object):
    assert await Pushed().push("1.0.0", **{EXT_DOWNGRADE: value}) == -1


async def test_newer_and_repeated_pushes_behave_as_before():
    p = Pushed()
    assert await p.push("2.0.0") is None  # already there: the version is reported again
    assert p.fetched == [] and [type(m) for m in p.sent] == [protocol.Inform]
    assert await p.push("2.10.0") == 100 and p.device.versions == {"default": "2.10.0"}


def test_the_platform_marks_a_push_that_goes_back(sqlite_engine):
    """Both ways a device gets its update, push and firmware/get reply, carry the flag when the
    task's source version is newer than the firmware; a firmware's own tag of that name is
    dropped, so only the platform can lift a device's protection."""
    f = seed_fleet(sqlite_engine, 1, version="2.0.0", target="1.0.0")
    f.firmware.ext_data = {"note": "x", EXT_DOWNGRADE: True}
    settings, dn = Settings(url_secret="x"), f.names[0]

    def ext(from_version: str | None) -> dict | None:
        return upgrade_data(settings, f.firmware, f.product_key, dn, from_version=from_version).get(
            "extData"
        )

    assert ext("2.0.0") == {"note": "x", EXT_DOWNGRADE: True}
    assert ext("0.9.0") == ext(None) == {"note": "x"}
    (reply,) = apply_reports(sqlite_engine, [FirmwareGet(f.product_key, dn, "1")]).replies
    assert reply.firmware is not None and reply.from_version == "2.0.0"


async def test_a_batch_to_an_older_firmware_updates_the_devices(platform: Platform):  # noqa: F811
    p = platform
    make_fleet(p.ctx.engine, 2, version="2.0.0", product_key=p.pk, prefix="back", online=False)
    names = ["back00000", "back00001"]
    devices = [p.device(n) for n in names]
    for d in devices:
        d.versions = {"default": "2.0.0"}
    image = b"\x7fELF old build " * 200
    older = p.add(image, "1.0.0")
    async with online(devices[0]), online(devices[1]):
        await p.all_online(names)
        batch = await p.batch(older, "2.0.0")
        states = await p.final(batch, 2)
    assert states == dict.fromkeys(names, ("updated", None))
    assert [d.versions for d in devices] == [{"default": "1.0.0"}] * 2
    assert [p.installed[n] for n in names] == [[image]] * 2
