"""Reconnected devices of a paced batch take their turn within the batch's rate.

A device that was offline when its push came waits in its workflow for `online`. In a batch
without a rate the bridge sends that signal the moment the device connects. In a paced batch it
does not: after a broker outage thousands of devices connect within seconds, and each pushed at
once would download at once, far beyond the rate the operator chose. The bridge marks such a
task `rate_limited` instead (still to_be_pushed, started) and nudges the batch workflow; the
pacer's claim then lets a burst of them push, out of the same per-minute budget as new starts,
by signalling `online` to their device workflows here.

Signal first, then clear the mark: a claim that dies in between signals again on its re-run,
which a device workflow absorbs (it pushes once, then waits for the report); the other order
would strand a device whose mark was cleared but whose signal was never sent.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select
from temporalio.client import Client

from activities.legacy_ids import signal_devices
from ota.contracts import SIGNAL_ONLINE
from ota.db.engine import session_scope
from ota.db.models import Task, utcnow
from ota.domain import TaskReason, TaskState


class Waiting(NamedTuple):
    task_id: int
    product_key: str
    device_name: str


def waiting_for_turn(engine: Engine, batch_id: str, limit: int) -> list[Waiting]:
    """Up to `limit` + 1 reconnected devices waiting, oldest task first (the one more tells the
    pacer whether more wait). Unstarted tasks are `rate_limited` too, but are not started."""
    with Session(engine) as session:
        rows = session.exec(
            select(Task.id, Task.product_key, Task.device_name)
            .where(
                Task.batch_id == batch_id,
                Task.state == TaskState.TO_BE_PUSHED,
                Task.reason == TaskReason.RATE_LIMITED,
                col(Task.started).is_(True),
            )
            .order_by(col(Task.id))
            .limit(limit + 1)
        ).all()
    return [Waiting(*row) for row in rows]  # type: ignore[arg-type]


def clear_marks(engine: Engine, task_ids: list[int]) -> None:
    """Only tasks still marked: a device workflow that pushed meanwhile has moved its task on."""
    if not task_ids:
        return
    with session_scope(engine) as session:
        session.exec(  # type: ignore[call-overload]
            update(Task)
            .where(col(Task.id).in_(task_ids), col(Task.reason) == TaskReason.RATE_LIMITED)
            .values(reason=None, updated_at=utcnow())
        )


async def give_turns(engine: Engine, client: Client, batch_id: str, limit: int) -> tuple[int, bool]:
    """Let up to `limit` waiting devices push; (how many were let go, whether more wait)."""
    waiting = await asyncio.to_thread(waiting_for_turn, engine, batch_id, limit)
    turn, more = waiting[:limit], len(waiting) > limit
    # A workflow already over (its task final or soon to be) has nothing to wake: no matter.
    await signal_devices(client, [(w.product_key, w.device_name) for w in turn], SIGNAL_ONLINE)
    await asyncio.to_thread(clear_marks, engine, [w.task_id for w in turn])
    return len(turn), more
