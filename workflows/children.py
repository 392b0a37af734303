"""Starting a device's workflow from a batch or a verification: one way, one place."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.contracts import (
        DEVICE_WORKFLOW,
        DeviceUpgradeInput,
        DeviceUpgradeResult,
        device_workflow_id,
    )


async def start_device(
    inp: DeviceUpgradeInput, target_version: str, started_by: str
) -> workflow.ChildWorkflowHandle:
    """A child that outlives its parent (ABANDON: the pacer continues as new without waiting for
    devices). Its id is the device's, so the server refuses a second ongoing update of it
    (WorkflowAlreadyStartedError).

    No search attributes: the Web UI finds a batch's devices by `ParentWorkflowId = "batch-ID"`
    and a product's by `WorkflowId STARTS_WITH "device-PK-"`, and a device sets OtaState only off
    the happy path (workflows/device.py). Attributes on every device cost the server a visibility
    row with indexed columns each (bench: CPU per device)."""
    return await workflow.start_child_workflow(
        DEVICE_WORKFLOW,
        inp,
        id=device_workflow_id(inp.product_key, inp.device_name),
        result_type=DeviceUpgradeResult,
        parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        static_summary=f"{inp.device_name} -> {target_version} ({started_by})",
    )
