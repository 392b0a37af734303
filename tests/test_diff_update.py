"""Differential packages reach only devices on a source version, with isDiff and the target's
digest; SDK devices patch their installed image and check it (real worker, bridge, download)."""

from __future__ import annotations

import hashlib

import pytest
from temporalio.testing import ActivityEnvironment

from activities.batches import BatchActivities
from ota.contracts import BatchInput
from ota.db.engine import session_scope
from ota.db.models import Firmware
from ota.device.simulator import synth_image
from ota.push import upgrade_data
from ota.services import security
from ota.services.diff import create_diff
from ota.settings import Settings
from tests.test_batch_records import NoClient
from tests.test_device_sdk import online
from tests.test_secure_update import Platform, platform  # noqa: F401  (the fixture)
from tests.test_workflow_support import make_firmware, make_fleet, tasks_of


def test_a_diff_batch_targets_only_its_source_versions(engine):
    pk, on_one = make_fleet(engine, 2, "1.0.0", prefix="one")
    make_fleet(engine, 1, "1.1.0", product_key=pk, prefix="eleven")
    make_fleet(engine, 1, "0.9.0", product_key=pk, prefix="old")
    make_fleet(engine, 1, "2.0.0", product_key=pk, prefix="new")
    make_fleet(engine, 1, "1.0.0", product_key=pk, prefix="wifi", module="wifi")
    fw = make_firmware(engine, pk, "2.0.0", src_versions=["1.0.0", "1.1.0"])
    acts, env = BatchActivities(engine, NoClient()), ActivityEnvironment()  # type: ignore[arg-type]

    everyone = env.run(acts.prepare_batch, BatchInput("d1", fw))  # no src_version: the package's
    assert (everyone.total, everyone.skipped) == (3, 1)
    assert sorted(tasks_of(engine, "d1")) == ["eleven00000", "one00000", "one00001"]
    only = env.run(acts.prepare_batch, BatchInput("d2", fw, src_versions=["1.1.0"]))
    assert only.total == 1 and list(tasks_of(engine, "d2")) == ["eleven00000"]
    with pytest.raises(Exception, match="must be among the firmware's 1.0.0, 1.1.0"):
        env.run(acts.prepare_batch, BatchInput("d3", fw, src_versions=["0.9.0"]))
    # Selected devices: one on a source version is taken, one on another version is not.
    picked = BatchInput("d4", fw, target="selected", device_names=["old00000", on_one[1]])
    assert env.run(acts.prepare_batch, picked).total == 1
    assert list(tasks_of(engine, "d4")) == [on_one[1]]


def test_the_push_of_a_diff_says_isdiff_and_carries_only_public_ext_data(engine):
    pk, _ = make_fleet(engine, 1)
    fw_id = make_firmware(engine, pk, "2.0.0", src_versions=["1.0.0"])
    with session_scope(engine) as s:
        fw = s.get(Firmware, fw_id)
        assert fw is not None
        fw.ext_data = {"targetSha256": "ab" * 32, "targetSize": 9, "_diff_from": 1}
        s.flush()
        s.expunge(fw)
    data = upgrade_data(Settings(url_secret="x"), fw, pk, "dev00000")
    assert data["isDiff"] == 1 and data["version"] == "2.0.0"
    assert data["extData"] == {"targetSha256": "ab" * 32, "targetSize": 9}


async def test_sdk_devices_apply_a_signed_diff_and_refuse_one_for_another_image(
    platform: Platform,  # noqa: F811
):
    """Secure update and a server-made package together: devices whose installed image is
    1.0.0 rebuild 2.0.0 (with storage, and in memory); one whose image is not 1.0.0 although it
    reports 1.0.0 gets a result that fails targetSha256: failed/verify_failed, nothing installed."""
    p = platform
    one, two = synth_image("default", "1.0.0"), synth_image("default", "2.0.0")
    a, b = p.add(one, "1.0.0"), p.add(two, "2.0.0")
    made = create_diff(p.ctx.engine, p.ctx.store, p.ctx.settings, a, b, need_verify=False)
    package = made.firmware
    assert package.id is not None and package.size < len(two) // 10
    names = ["disk00000", "ram00000", "odd00000"]
    for name in names:
        make_fleet(p.ctx.engine, 1, product_key=p.pk, prefix=name[:-5], online=False)
    key = security.public_key(p.ctx.engine, p.pk)
    disk = p.device(names[0], public_key=key, current_image=lambda _m: one)
    ram = p.device(names[1], public_key=key, current_image=lambda _m: one)
    ram.download_dir = None  # a device without storage: the package stays in memory
    installed_in_ram: list[object] = []

    async def ram_install(path, upgrade) -> None:  # type: ignore[no-untyped-def]
        installed_in_ram.append((path, upgrade.is_diff))

    ram.install = ram_install
    image_file = p.workdir / "odd-current.bin"
    image_file.write_bytes(synth_image("default", "0.9.0"))
    odd = p.device(names[2], public_key=key, current_image=image_file)
    async with online(disk), online(ram), online(odd):
        await p.all_online(names)
        batch = await p.batch(package.id, "1.0.0")
        states = await p.final(batch, 3)
    assert states == {
        names[0]: ("updated", None),
        names[1]: ("updated", None),
        names[2]: ("failed", "verify_failed"),
    }
    assert p.installed[names[0]] == [two]  # the rebuilt image, not the package
    assert hashlib.sha256(p.installed[names[0]][0]).hexdigest() == package.ext_data["targetSha256"]
    assert installed_in_ram == [(None, True)] and ram.versions == {"default": "2.0.0"}
    assert p.installed[names[2]] == [] and odd.versions == {"default": "1.0.0"}
    assert tasks_of(p.ctx.engine, batch)[names[1]].state == "updated"
