"""Task-level database work of a device workflow: re-read a task, record its final state."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.targets import finish_tasks
from ota.contracts import FinishTaskRequest, TaskCheck
from ota.db.engine import after_commit, session_scope
from ota.db.models import Task
from ota.domain import TaskReason, TaskState
from ota.metrics import TASK_TIMEOUTS

# `ota_task_timeouts` by kind: which of the device workflow's timeouts failed the task.
TIMEOUT_KINDS: dict[str, str] = {TaskReason.TIMEOUT: "upgrade", TaskReason.NO_RESPONSE: "pickup"}
for _kind in TIMEOUT_KINDS.values():  # served as 0 from the start: rate() and alerts need a series
    TASK_TIMEOUTS.labels(kind=_kind)


class TaskActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn
    def check_task(self, task_id: int) -> TaskCheck:
        """What the bridge has recorded: a final state whose signal was lost, or the first
        progress report the timeout counts from."""
        with Session(self.engine) as session:
            task = session.get(Task, task_id)
            if task is None:
                raise ApplicationError(f"task {task_id} not found", non_retryable=True)
            first = task.first_progress_at
            return TaskCheck(
                TaskState(task.state), task.reason, first.isoformat() if first else None
            )

    @activity.defn
    def finish_task(self, req: FinishTaskRequest) -> TaskCheck:
        """Record a final state unless the task already has one (the bridge's `updated` wins
        over a late timeout); returns what the task ends with."""
        with session_scope(self.engine) as session:
            moved = finish_tasks(session, [req.task_id], req.state, req.reason)
            if moved and (kind := TIMEOUT_KINDS.get(req.reason or "")) is not None:
                after_commit(session, TASK_TIMEOUTS.labels(kind=kind).inc)
            task = session.get(Task, req.task_id)
            if task is None:
                raise ApplicationError(f"task {req.task_id} not found", non_retryable=True)
            session.refresh(task)
            return TaskCheck(TaskState(task.state), task.reason)
