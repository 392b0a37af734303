"""Verification's database work: register and fill the verify batch, then judge the firmware."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio import activity

from activities.batches import permanent
from activities.targets import insert_tasks, select_targets
from ota.contracts import TaskRef, VerifyFinishRequest, VerifyInput, VerifyPrepared
from ota.db.engine import session_scope
from ota.db.models import Batch, Firmware, Task, utcnow
from ota.domain import BatchState, FirmwareState
from ota.errors import OtaError
from ota.services.verify import resolve_verify


class VerifyActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn
    def prepare_verify(self, inp: VerifyInput) -> VerifyPrepared:
        """Idempotent like prepare_batch: registers a verification started from the Temporal CLI."""
        try:
            with session_scope(self.engine) as session:
                batch = session.get(Batch, inp.batch_id)
                if batch is None:
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
                return VerifyPrepared(
                    product_key=batch.product_key,
                    target_version=batch.target_version,
                    tasks=[TaskRef(cast(int, task_id), name) for task_id, name in tasks],
                )
        except OtaError as exc:
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
                batch.state = BatchState.COMPLETED
                batch.finished_at = utcnow()
