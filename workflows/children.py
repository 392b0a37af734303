"""Starting a device's workflow from a batch or a verification: one way, one place."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.contracts import (
        DEVICE_WORKFLOW,
        DeviceUpgradeInput,
        DeviceUpgradeResult,
        device_workflow_id,
        legacy_device_workflow_id,
    )

# Device workflow ids became `device/{pk}/{dn}`. A pacer or verification run that started its
# first child before (with `device-{pk}-{dn}`) replays without this marker and keeps the old id
# for the rest of that run; its next run, and every new one, use the new id.
DEVICE_ID_PATCH = "device-workflow-id-slash"


def child_id(product_key: str, device_name: str) -> str:
    if workflow.patched(DEVICE_ID_PATCH):
        return device_workflow_id(product_key, device_name)
    return legacy_device_workflow_id(product_key, device_name)


async def start_device(
    inp: DeviceUpgradeInput, target_version: str, started_by: str
) -> workflow.ChildWorkflowHandle:
    """A child that outlives its parent (ABANDON: the pacer continues as new without waiting for
    devices). Its id is the device's, so the server refuses a second ongoing update of it
    (WorkflowAlreadyStartedError); one still running under its legacy id is found by the claim
    (activities/legacy_ids.py).

    No search attributes: the Web UI finds a batch's devices by `ParentWorkflowId = "batch-ID"`
    and a product's by `WorkflowId STARTS_WITH "device/PK/"`, and a device sets OtaState only off
    the happy path (workflows/device.py). Attributes on every device cost the server a visibility
    row with indexed columns each (bench: CPU per device)."""
    return await workflow.start_child_workflow(
        DEVICE_WORKFLOW,
        inp,
        id=child_id(inp.product_key, inp.device_name),
        result_type=DeviceUpgradeResult,
        parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        static_summary=f"{inp.device_name} -> {target_version} ({started_by})",
    )
