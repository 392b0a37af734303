"""Device workflows still running under their legacy id `device-{pk}-{dn}`: finding them.

Device workflow ids became `device/{pk}/{dn}`; one started before keeps its old id until it ends
(days, for a device that stays offline). The server sees no conflict between it and a new one
under the new id, so whatever signals a device or asks whether it is busy tries the legacy id
too. Delete this module with the `device-workflow-id-slash` patch (workflows/children.py) once
no installation can hold such a workflow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from ota.contracts import device_workflow_id, legacy_device_workflow_id
from ota.db.models import Task
from ota.domain import ACTIVE_TASK_STATES


class Suspect(NamedTuple):
    """A task about to start whose device may be updating under its legacy id."""

    task_id: int
    product_key: str
    device_name: str


def suspects(session: Session, batch_id: str, task_ids: Sequence[int]) -> list[Suspect]:
    """Of these tasks, those whose device has an active, started task in another batch: only
    their devices can have a workflow running (under either id), so only they are asked about.
    Usually none, and one indexed query (tasks by device and state) per page."""
    if not task_ids:
        return []
    other = aliased(Task)
    rows = session.exec(
        select(Task.id, Task.product_key, Task.device_name)
        .join(other, col(other.device_id) == col(Task.device_id))
        .where(
            col(Task.id).in_(task_ids),
            col(other.batch_id) != batch_id,
            col(other.state).in_(ACTIVE_TASK_STATES),
            col(other.started).is_(True),
        )
        .distinct()
    ).all()
    return [Suspect(*row) for row in rows]


async def running_under_legacy_id(client: Client, tasks: Sequence[Suspect]) -> list[int]:
    """The tasks whose device has a workflow running under its legacy id: busy, as the server
    says of one running under the new id when the child starts."""

    async def running(t: Suspect) -> bool:
        handle = client.get_workflow_handle(legacy_device_workflow_id(t.product_key, t.device_name))
        try:
            return (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise

    found = await asyncio.gather(*(running(t) for t in tasks))
    return [t.task_id for t, yes in zip(tasks, found, strict=True) if yes]


async def signal_device(
    client: Client, product_key: str, device_name: str, signal: str, *args: object
) -> bool:
    """Signal the device's workflow under its id, else under its legacy id; False if neither
    is running."""
    for workflow_id in (
        device_workflow_id(product_key, device_name),
        legacy_device_workflow_id(product_key, device_name),
    ):
        try:
            await client.get_workflow_handle(workflow_id).signal(signal, *args)
            return True
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return False


SIGNAL_CONCURRENCY = 50  # signals in flight; the server's frontend takes hundreds per second


async def signal_devices(
    client: Client, devices: Sequence[tuple[str, str]], signal: str, *args: object
) -> list[bool]:
    """`signal_device` for each (product key, device name), a bounded number at a time; for
    each, False if its workflow is over."""
    gate = asyncio.Semaphore(SIGNAL_CONCURRENCY)

    async def one(product_key: str, device_name: str) -> bool:
        async with gate:
            return await signal_device(client, product_key, device_name, signal, *args)

    return await asyncio.gather(*(one(pk, dn) for pk, dn in devices))
