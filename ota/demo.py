"""`ota dev --demo`: 50 simulated devices, a sample firmware verified, then a phased batch.

So a new user sees the whole flow (CLI, console, Temporal Web UI) within a minute."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

from sqlalchemy import func
from sqlmodel import Session, select

from ota.context import Context
from ota.contracts import BatchInput, batch_workflow_id
from ota.db.models import Device, DeviceModule, Firmware, Product
from ota.devstack import Component, DevStack
from ota.domain import OPEN_BATCH_STATES, TaskState
from ota.services.batches import create_batch, show_batch
from ota.services.firmware import add_firmware
from ota.services.products import add_product
from ota.services.verify import start_verify, wait_verify

log = logging.getLogger("ota.demo")

PRODUCT = "demo"
DEVICES = 50
FROM_VERSION, TO_VERSION = "1.0.0", "2.0.0"
FLEET_UP_SECONDS = 60
FINISHED_POLL_SECONDS = 2


def sample_image(size: int = 256 * 1024) -> bytes:
    """A deterministic stand-in for a firmware image."""
    blocks: list[bytes] = []
    seed = b"ota demo firmware " + TO_VERSION.encode()
    while sum(map(len, blocks)) < size:
        seed = hashlib.sha256(seed).digest()
        blocks.append(seed)
    return b"".join(blocks)[:size]


def run_demo(stack: DevStack) -> None:
    ctx = Context(stack.settings)
    with Session(ctx.engine) as s:
        if s.get(Product, PRODUCT) is None:
            add_product(ctx.engine, PRODUCT, "Demo thermostat")
    stack.start(
        Component(
            "simulator",
            [
                sys.executable,
                "-m",
                "starter",
                "simulate",
                "--product",
                PRODUCT,
                "--devices",
                str(DEVICES),
                "--version",
                FROM_VERSION,
                "--prefix",
                "demo-",
                "--register",
                "--install-seconds",
                "3",
            ],
        )  # fmt: skip
    )
    _wait_for_fleet(ctx)
    firmware_id = _sample_firmware(ctx)
    batch_id = asyncio.run(_verify_and_update(ctx, firmware_id))
    # The stack runs in the foreground meanwhile: a thread says when the batch is over.
    threading.Thread(
        target=_say_when_finished, args=(ctx, stack, batch_id), name="demo-batch", daemon=True
    ).start()


def _say_when_finished(ctx: Context, stack: DevStack, batch_id: str) -> None:
    """One line when the demo batch is over: how it ended and where to look at it."""
    while (batch := show_batch(ctx.engine, batch_id))["state"] in OPEN_BATCH_STATES:
        time.sleep(FINISHED_POLL_SECONDS)
    log.info("%s", finished_line(stack, batch))


def finished_line(stack: DevStack, batch: dict[str, Any]) -> str:
    s = stack.settings
    counts = ", ".join(f"{batch['counts'][t]} {t}" for t in TaskState if batch["counts"].get(t))
    workflow = quote(batch_workflow_id(batch["id"]), safe="")
    namespace = quote(s.temporal_namespace, safe="")
    return (
        f"demo: batch {batch['id']} {batch['state']}: {counts or 'no devices'}. "
        f"See it at http://{s.http_host}:{s.http_port}/batches/{batch['id']} and its workflow "
        f"at {stack.temporal_ui()}/namespaces/{namespace}/workflows/{workflow}"
    )


def _wait_for_fleet(ctx: Context) -> None:
    deadline = time.monotonic() + FLEET_UP_SECONDS
    while (n := _reporting(ctx)) < DEVICES:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {n} of {DEVICES} demo devices reported; see the simulator log"
            )
        time.sleep(0.5)
    log.info("demo: %d simulated devices online on %s", DEVICES, FROM_VERSION)


def _reporting(ctx: Context) -> int:
    with Session(ctx.engine) as s:
        return s.exec(
            select(func.count())
            .select_from(DeviceModule)
            .join(Device, Device.id == DeviceModule.device_id)  # type: ignore[arg-type]
            .where(Device.product_key == PRODUCT, Device.online)
        ).one()


def _sample_firmware(ctx: Context) -> int:
    with Session(ctx.engine) as s:
        existing = s.exec(
            select(Firmware).where(Firmware.product_key == PRODUCT, Firmware.version == TO_VERSION)
        ).first()
    if existing is not None and existing.id is not None:
        return existing.id
    fw = add_firmware(
        ctx.engine, ctx.store, ctx.settings, src=io.BytesIO(sample_image()),
        file_name=f"demo-{TO_VERSION}.bin", product_key=PRODUCT, name="demo_firmware",
        version=TO_VERSION, description="Sample firmware added by ota dev --demo",
    )  # fmt: skip
    assert fw.id is not None
    log.info("demo: added firmware %d (%s)", fw.id, TO_VERSION)
    return fw.id


async def _verify_and_update(ctx: Context, firmware_id: int) -> str:
    """Verify the sample firmware unless it is; start the phased batch; its id."""
    with Session(ctx.engine) as s:
        state = s.get(Firmware, firmware_id).state  # type: ignore[union-attr]
        first_two = list(
            s.exec(select(Device.name).where(Device.product_key == PRODUCT).order_by(Device.name))
        )[:2]
    if state != "verified":
        log.info("demo: verifying firmware %d on %s", firmware_id, ", ".join(first_two))
        verify = await start_verify(ctx, firmware_id, first_two, 10)
        shown = await wait_verify(ctx, verify["id"])
        log.info("demo: firmware %d is %s", firmware_id, shown["firmware_state"])
    batch = await create_batch(
        ctx,
        BatchInput(
            batch_id="", firmware_id=firmware_id, src_versions=[FROM_VERSION], target="phased",
            percent=50, rate_per_minute=60, retry_interval_minutes=0, max_retries=2,
            timeout_minutes=10,
        ),
    )  # fmt: skip
    log.info(
        "demo: phased batch %s updates %d%% of the fleet at 60 devices/min; "
        "watch it with `ota batch show %s` or in the console",
        batch["id"], 50, batch["id"],
    )  # fmt: skip
    return str(batch["id"])
