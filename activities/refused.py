"""A batch or verification its workflow refused: one started from the Temporal CLI with input
the CLI and the API would have refused (a rate out of range, say). It is recorded `failed` with
the reason, so `ota batch show`, the API and the console explain what the workflow's failure
says, instead of not knowing the batch."""

from __future__ import annotations

from sqlalchemy import Engine

from ota.db.engine import after_commit, session_scope
from ota.db.models import Batch, utcnow
from ota.domain import BATCH_ID_RE, BatchKind, BatchState
from ota.errors import Conflict, OtaError
from ota.metrics import BATCH_TRANSITIONS
from ota.services.firmware import firmware_by_id

NOTE_MAX = 200  # Batch.state_note


def record_refused(
    engine: Engine, batch_id: str, firmware_id: int, kind: str, exc: OtaError
) -> None:
    """Record the refused batch, `failed`, when there is something to record it against: an id
    a batch can have and an existing firmware (its product, module and version)."""
    if not BATCH_ID_RE.fullmatch(batch_id):
        return
    with session_scope(engine) as session:
        firmware = firmware_by_id(session, firmware_id)
        if firmware is None or firmware.id is None or session.get(Batch, batch_id) is not None:
            return
        batch = Batch(
            id=batch_id,
            firmware_id=firmware.id,
            kind=kind if kind in set(BatchKind) else BatchKind.STATIC,
            product_key=firmware.product_key,
            module=firmware.module,
            target_version=firmware.version,
            state_note=f"refused: {exc}"[:NOTE_MAX],
            finished_at=utcnow(),
        )
        batch.state = BatchState.FAILED
        session.add(batch)
        after_commit(session, BATCH_TRANSITIONS.labels(state=BatchState.FAILED.value).inc)


def refused_before(batch: Batch) -> OtaError | None:
    """A retried prepare of a batch refused already fails again, for the same reason."""
    if batch.state != BatchState.FAILED:
        return None
    return Conflict(batch.state_note or "refused", field="batch")
