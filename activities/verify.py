"""Verification's database work: register and fill the verify batch, then judge the firmware."""

from __future__ import annotations

import asyncio
from typing import cast

from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio import activity
from temporalio.client import Client

from activities.batches import count_batch_transition, permanent
from activities.legacy_ids import Suspect, running_under_legacy_id, suspects
from activities.refused import record_refused, refused_before
from activities.targets import finish_tasks, insert_tasks
from ota.contracts import TaskRef, VerifyFinishRequest, VerifyInput, VerifyPrepared
from ota.db.engine import session_scope
from ota.db.models import Batch, Firmware, Task, utcnow
from ota.domain import BatchKind, BatchState, FirmwareState, TaskReason, TaskState
from ota.errors import OtaError
from ota.services.targets import select_targets
from ota.services.verify import resolve_verify


class VerifyActivities:
    def __init__(self, engine: Engine, client: Client) -> None:
        self.engine = engine
        self.client = client

    @activity.defn
    async def prepare_verify(self, inp: VerifyInput) -> VerifyPrepared:
        """Idempotent like prepare_batch: registers a verification started from the Temporal CLI.
        A device whose workflow still runs under its legacy id is busy: its task fails `busy`
        here (the server cannot tell when its new workflow starts), and that workflow, finding
        its task final, ends at once without a push."""
        prep, maybe = await asyncio.to_thread(self._prepare, inp)
        if maybe and (busy := await running_under_legacy_id(self.client, maybe)):
            await asyncio.to_thread(self._finish_busy, busy)
        return prep

    def _finish_busy(self, ids: list[int]) -> None:
        with session_scope(self.engine) as session:
            finish_tasks(session, ids, TaskState.FAILED, TaskReason.BUSY)

    def _prepare(self, inp: VerifyInput) -> tuple[VerifyPrepared, list[Suspect]]:
        known = True  # registered by `ota verify` (or the API): its input was checked
        try:
            with session_scope(self.engine) as session:
                batch = session.get(Batch, inp.batch_id)
                if batch is not None and (refused := refused_before(batch)):
                    raise refused
                if batch is None:
                    known = False
                    batch = resolve_verify(session, inp)
                    session.add(batch)
                    session.flush()
                if batch.prepared_at is None:
                    targets, batch.skipped = select_targets(session, batch, inp.device_names)
                    batch.total = insert_tasks(session, batch, targets)
                    batch.prepared_at = utcnow()
                    firmware = session.get(Firmware, batch.firmware_id)
                    if firmware is not None:
                        firmware.state = FirmwareState.VERIFYING
                tasks = session.exec(
                    select(Task.id, Task.device_name)
                    .where(Task.batch_id == batch.id)
                    .order_by(col(Task.id))
                ).all()
                prep = VerifyPrepared(
                    product_key=batch.product_key,
                    target_version=batch.target_version,
                    tasks=[TaskRef(cast(int, task_id), name) for task_id, name in tasks],
                )
                return prep, suspects(session, batch.id, [t.task_id for t in prep.tasks])
        except OtaError as exc:
            if not known:
                record_refused(self.engine, inp.batch_id, inp.firmware_id, BatchKind.VERIFY, exc)
            raise permanent(exc) from exc

    @activity.defn
    def finish_verify(self, req: VerifyFinishRequest) -> None:
        with session_scope(self.engine) as session:
            firmware = session.get(Firmware, req.firmware_id)
            if firmware is not None:
                firmware.state = (
                    FirmwareState.VERIFIED if req.verified else FirmwareState.VERIFY_FAILED
                )
            batch = session.get(Batch, req.batch_id)
            if batch is not None and batch.finished_at is None:
                state = BatchState.CANCELED if req.canceled else BatchState.COMPLETED
                count_batch_transition(session, batch, state)
                batch.state = state
                batch.finished_at = utcnow()
