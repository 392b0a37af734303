"""Secure update and a server-made differential package with every piece a real process:
`ota worker`, `ota bridge`, `ota api` and `ota simulate --public-key` (devices that verify
digestsign and patch their synthesized 1.0.0 image)."""

from __future__ import annotations

import base64
import io
import uuid
from collections import Counter

import pytest

from ota import signing
from ota.contracts import BatchInput
from ota.device.simulator import synth_image
from ota.services import security
from ota.services.batches import create_batch
from ota.services.diff import create_diff
from ota.services.firmware import add_firmware
from ota.services.products import add_product
from tests.fixtures.stack import OtaProcesses
from tests.test_e2e import reported, task_states, wait_for
from tests.test_workflow_support import upgrade_listener

pytestmark = pytest.mark.slow
DEVICES = 20


async def test_simulated_fleet_verifies_signatures_and_applies_a_diff(
    ota_processes: OtaProcesses, mqtt_url
):
    stack = ota_processes
    ctx = stack.context()
    pk = f"sde{uuid.uuid4().hex[:8]}"
    add_product(ctx.engine, pk, "Secure diff product")
    security.set_secure_update(ctx.engine, ctx.settings, pk, True)
    key_file = stack.home / "product.pem"
    key_file.write_text(security.public_key(ctx.engine, pk))
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    stack.start(
        "sim", "simulate", "--product", pk, "--devices", str(DEVICES), "--version", "1.0.0",
        "--register", "--prefix", "sd-", "--duration", "300", "--install-seconds", "0.2",
        "--public-key", str(key_file),
    )  # fmt: skip
    await wait_for(lambda: reported(ctx.engine, pk, "1.0.0") >= DEVICES, 60, "fleet on 1.0.0")

    ids = []
    for version in ("1.0.0", "2.0.0"):
        fw = add_firmware(
            ctx.engine, ctx.store, ctx.settings, src=io.BytesIO(synth_image("default", version)),
            file_name=f"sim-{version}.bin", product_key=pk, name="sim_image", version=version,
            need_verify=False,
        )  # fmt: skip
        ids.append(fw.id)
    package = create_diff(ctx.engine, ctx.store, ctx.settings, *ids, need_verify=False).firmware
    assert package.id is not None
    async with upgrade_listener(mqtt_url, pk) as pushes:
        batch = await create_batch(ctx, BatchInput("", package.id, src_versions=["1.0.0"]))
        states = await wait_for(
            lambda: (c := task_states(ctx.engine, batch["id"]))["updated"] == DEVICES and c,
            90,
            f"all {DEVICES} updated (simulator log: {stack.log('sim')[-500:]!r})",
        )
    assert states == Counter({"updated": DEVICES})
    assert reported(ctx.engine, pk, "2.0.0") == DEVICES
    public = signing.load_public_key(key_file.read_text())
    data = pushes[0][1]["data"]
    assert data["isDiff"] == 1 and data["size"] == package.size
    assert signing.verify_digestsign(public, data["sign"], data["digestsign"])
    assert len(base64.b64decode(data["digestsign"])) == 256
    assert len(pushes) == DEVICES
    assert {p["data"]["digestsign"] for _, p in pushes} == {data["digestsign"]}
