"""Starting a device's workflow from a batch or a verification: one way, one place."""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from ota.contracts import (
        BATCH_ID,
        DEVICE_WORKFLOW,
        PRODUCT_KEY,
        DeviceUpgradeInput,
        DeviceUpgradeResult,
        device_workflow_id,
    )


async def start_device(
    inp: DeviceUpgradeInput, target_version: str, started_by: str
) -> workflow.ChildWorkflowHandle:
    """A child that outlives its parent (ABANDON: the pacer continues as new without waiting for
    devices). Its id is the device's, so the server refuses a second ongoing update of it
    (WorkflowAlreadyStartedError). No OtaState yet: the device workflow sets it off the happy
    path and at the end (workflows/device.py)."""
    return await workflow.start_child_workflow(
        DEVICE_WORKFLOW,
        inp,
        id=device_workflow_id(inp.product_key, inp.device_name),
        result_type=DeviceUpgradeResult,
        parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(BATCH_ID, inp.batch_id),
                SearchAttributePair(PRODUCT_KEY, inp.product_key),
            ]
        ),
        static_summary=f"{inp.device_name} -> {target_version} ({started_by})",
    )
