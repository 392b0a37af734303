"""What someone waiting for a batch or a verification is shown: how far it got, and how many of
its devices it waits for because they are offline (`ota batch create --wait`, `ota verify
--wait`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from ota.db.models import Task
from ota.domain import ACTIVE_TASK_STATES, FINAL_TASK_STATES, TaskReason
from ota.errors import NotFound
from ota.services.batches import batch_by_id, batch_counts


@dataclass(frozen=True)
class BatchSnapshot:
    batch_id: str
    state: str
    total: int  # tasks so far (0 until the workflow has prepared the batch)
    counts: dict[str, int] = field(default_factory=dict)  # tasks by state
    offline: int = 0  # active tasks whose device was offline at its push: pushed on its return

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if state in FINAL_TASK_STATES)


def batch_snapshot(engine: Engine, batch_id: str) -> BatchSnapshot:
    """The batch's state and counts now. Offline tasks are counted by the reason their push
    left (a partial index, ix_tasks_batch_reason_id), not by the devices' online flags: a
    device not pushed yet is not waited for yet."""
    with Session(engine) as session:
        batch = batch_by_id(session, batch_id)
        if batch is None:
            raise NotFound("batch", batch_id)
        offline = session.exec(
            select(func.count()).where(
                col(Task.batch_id) == batch_id,
                col(Task.reason) == TaskReason.OFFLINE,
                col(Task.state).in_(ACTIVE_TASK_STATES),  # a retry's push keeps its state
            )
        ).one()
        return BatchSnapshot(
            batch_id, batch.state, batch.total, batch_counts(session, batch_id), offline
        )
