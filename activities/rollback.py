"""The rollback policy's activity: a stopped batch's failed devices get its rollback firmware."""

from __future__ import annotations

from temporalio import activity

from ota.context import Context
from ota.contracts import RollbackRequest, RollbackResult
from ota.services.rollback import start_rollback


class RollbackActivities:
    """Holds the worker's Context: the rollback batch is created as `ota batch create` creates
    one (the same rules, the same workflow start)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @activity.defn
    async def start_rollback(self, req: RollbackRequest) -> RollbackResult:
        """Idempotent: the rollback batch's id is the stopped batch's (rollback_batch_id), and
        a retry finds the batch an earlier attempt created."""
        return await start_rollback(self.context, req)
