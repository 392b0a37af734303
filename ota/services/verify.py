"""Verification: update a few chosen devices first; the firmware is verified if all update."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from ota.context import Context
from ota.contracts import (
    VERIFY_WORKFLOW,
    VerifyInput,
    verify_workflow_id,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, DeviceModule, Firmware
from ota.domain import (
    BatchKind,
    BatchState,
    FirmwareState,
    FirmwareType,
    Target,
    validate_timeout,
)
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services.batches import find_firmware, new_batch_id, show_batch, start_registered
from ota.services.firmware import firmware_by_id

MAX_DEVICES = 100


def resolve_verify(session: Session, inp: VerifyInput) -> Batch:
    """Check a verification request; the Batch row to insert (not inserted). The timeout's
    range first: a typo fails before anything is read (the CLI and the API check nothing)."""
    validate_timeout(inp.timeout_minutes)
    firmware = firmware_by_id(session, inp.firmware_id)
    if firmware is None:
        raise NotFound("firmware", inp.firmware_id)
    if firmware.state == FirmwareState.VERIFYING:
        raise Conflict(f"firmware {firmware.id} is being verified already", field="firmware")
    if firmware.state == FirmwareState.VERIFIED:
        raise Conflict(f"firmware {firmware.id} is verified already", field="firmware")
    names = list(dict.fromkeys(inp.device_names))
    if not 1 <= len(names) <= MAX_DEVICES:
        raise InvalidInput("device", f"give 1 to {MAX_DEVICES} devices to verify on")
    on_module = (col(DeviceModule.device_id) == col(Device.id)) & (
        col(DeviceModule.module) == firmware.module
    )
    versions = dict(
        session.exec(
            select(Device.name, DeviceModule.version)
            .join(DeviceModule, on_module, isouter=True)
            .where(Device.product_key == firmware.product_key, col(Device.name).in_(names))
        ).all()
    )
    for name in names:
        if name not in versions:
            raise InvalidInput("device", f"{name} is not a device of {firmware.product_key}")
        version = versions[name]
        if version is None:
            raise InvalidInput("device", f"{name} has not reported a {firmware.module} version")
        if version == firmware.version:
            raise InvalidInput("device", f"{name} already runs {version}")
        if firmware.type == FirmwareType.DIFF and version not in firmware.src_versions:
            allowed = ", ".join(firmware.src_versions)
            raise InvalidInput("device", f"{name} runs {version}; this diff applies to {allowed}")
    assert firmware.id is not None
    return Batch(
        id=inp.batch_id,
        firmware_id=firmware.id,
        kind=BatchKind.VERIFY,
        target=Target.SELECTED,
        src_versions=list(firmware.src_versions),
        timeout_minutes=inp.timeout_minutes,
        product_key=firmware.product_key,
        module=firmware.module,
        target_version=firmware.version,
        state=BatchState.IN_PROGRESS,
    )


async def start_verify(
    ctx: Context, firmware_ref: int | str, device_names: list[str], timeout: int | None = None
) -> dict[str, Any]:
    """Register the verification batch and start its workflow."""
    with Session(ctx.engine) as session:  # every rule first: bad input fails fast
        firmware = find_firmware(session, firmware_ref)
        assert firmware.id is not None
        inp = VerifyInput(new_batch_id(), firmware.id, list(device_names), timeout)
        batch = resolve_verify(session, inp)
    client = await ctx.temporal()  # before registering: no batch without a workflow
    with session_scope(ctx.engine) as session:
        session.add(batch)
    await start_registered(
        ctx,
        client,
        batch,
        VERIFY_WORKFLOW,
        inp,
        verify_workflow_id(inp.batch_id),
        f"verify firmware {firmware.id} ({firmware.name} {firmware.version})"
        f" on {len(inp.device_names)} device(s) of {firmware.product_key}",
        "devices: " + ", ".join(inp.device_names),
    )
    return show_batch(ctx.engine, inp.batch_id)


async def wait_verify(ctx: Context, batch_id: str) -> dict[str, Any]:
    """Wait for the verification to end; the batch and the firmware's new state."""
    handle = (await ctx.temporal()).get_workflow_handle(verify_workflow_id(batch_id))
    await handle.result()
    shown = show_batch(ctx.engine, batch_id)
    with session_scope(ctx.engine) as session:
        firmware = session.get(Firmware, shown["firmware_id"])
        shown["firmware_state"] = firmware.state if firmware else None
    return shown
