"""The rollback policy (Azure Device Update's), asked by BatchWorkflow once its stop rule trips:
one activity starts a batch that pushes the rollback firmware to the devices failed by then."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import start_rollback
    from ota.contracts import BatchInput, RollbackRequest, RollbackResult
    from workflows.policies import ROLLBACK_TIMEOUT

# A run that tripped its stop rule before there was a rollback policy started no rollback.
ROLLBACK_PATCH = "pacer-rollback"


async def roll_back(inp: BatchInput) -> RollbackResult | None:
    """Start the rollback batch of a batch whose stop rule has just tripped, if the batch has a
    rollback firmware. Asked once per batch (the rule trips once), and the activity is
    idempotent (the rollback batch's id is the batch's): one rollback batch, whatever crashes."""
    if inp.rollback_firmware_id is None or not workflow.patched(ROLLBACK_PATCH):
        return None
    return await workflow.execute_activity(
        start_rollback,
        RollbackRequest(inp.batch_id, inp.rollback_firmware_id),
        start_to_close_timeout=ROLLBACK_TIMEOUT,
    )
