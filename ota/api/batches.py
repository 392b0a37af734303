"""/api/v1 batches: create static and dynamic batches, list, show, their tasks, cancel, pause,
resume, promote."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Query, Response

from ota.api.batch_body import BatchCreate, body_options
from ota.api.common import UNAVAILABLE, Ctx, api_router
from ota.api.params import (
    AfterBatch,
    AfterId,
    BatchId,
    BeforeBatch,
    BeforeId,
    FirmwareId,
    FirmwareIdQuery,
    Limit,
)
from ota.api.schemas import CancelBody
from ota.api.views import batch_view, task_view
from ota.context import Context
from ota.contracts import BatchInput
from ota.domain import BatchState, TaskReason, TaskState
from ota.services import batch_signals
from ota.services import batches as service
from ota.services.batch_preview import preview_batch
from ota.services.firmware import get_firmware
from ota.services.paging import PAGE_DEFAULT

router = api_router("batches")


DryRun = Annotated[
    bool,
    Query(
        description="Create nothing: answer 200 with what the batch would target (per source "
        "version and phase, skipped, offline, busy in another batch) and when its last push is "
        "due from its rate, ramp, windows and phases (`eta`, `eta_notes`: the fastest case, "
        "time at phase gates not counted); a request create would refuse is refused the same "
        "way."
    ),
]


@router.post(
    "/firmware/{firmware_id:int}/batches",
    status_code=201,
    summary="CreateOTAStaticUpgradeJob / CreateOTADynamicUpgradeJob (Batch Update)",
    responses={**UNAVAILABLE, 200: {"description": "dry_run: the preview; nothing created"}},
)
async def create_batch(
    ctx: Ctx,
    firmware_id: FirmwareId,
    body: BatchCreate,  # type: ignore[valid-type]  # a model made from the options (batch_body)
    response: Response,
    dry_run: DryRun = False,
) -> dict[str, Any]:
    inp = BatchInput(batch_id="", firmware_id=firmware_id, **body_options(body))
    if dry_run:
        response.status_code = 200
        return preview_batch(ctx.engine, inp).to_dict()
    return batch_view(ctx.settings, await service.create_batch(ctx, inp))


@router.get("/firmware/{firmware_id:int}/batches", summary="ListOTAJobByFirmware: one page")
def firmware_batches(
    ctx: Ctx,
    firmware_id: FirmwareId,
    state: BatchState | None = None,
    limit: Limit = PAGE_DEFAULT,
    after_id: AfterBatch = None,
    before_id: BeforeBatch = None,
) -> dict[str, Any]:
    """The firmware's batches, newest first, a page at a time as `GET /batches`."""
    get_firmware(ctx.engine, firmware_id)  # 404 rather than an empty list
    return batch_page(ctx, firmware_id, state, limit, after_id, before_id)


@router.get("/batches", summary="List batches, newest first: one page")
def list_batches(
    ctx: Ctx,
    firmware_id: FirmwareIdQuery = None,
    state: BatchState | None = None,
    limit: Limit = PAGE_DEFAULT,
    after_id: AfterBatch = None,
    before_id: BeforeBatch = None,
) -> dict[str, Any]:
    """Batches newest first with their tasks counted by state, `limit` at a time: the next page
    starts after the batch `next_after_id` (None: this is the last), the previous one ends
    before `prev_before_id` (None: this is the first)."""
    return batch_page(ctx, firmware_id, state, limit, after_id, before_id)


def batch_page(
    ctx: Context,
    firmware_id: int | None = None,
    state: str | None = None,
    limit: int = PAGE_DEFAULT,
    after_id: str | None = None,
    before_id: str | None = None,
) -> dict[str, Any]:
    """One page of batches as the API and the console show them."""
    page = service.batch_page(ctx.engine, firmware_id, state, limit, after_id, before_id)
    return {
        "items": [batch_view(ctx.settings, b) for b in page.items],
        "next_after_id": page.next_after_id,
        "prev_before_id": page.prev_before_id,
    }


@router.get("/batches/{batch_id}", summary="QueryOTAJob")
def show_batch(ctx: Ctx, batch_id: BatchId) -> dict[str, Any]:
    return batch_view(ctx.settings, service.show_batch(ctx.engine, batch_id))


@router.get("/batches/{batch_id}/tasks", summary="ListOTATaskByJob: one page of devices")
def list_tasks(
    ctx: Ctx,
    batch_id: BatchId,
    state: TaskState | None = None,
    reason: TaskReason | None = None,
    limit: Limit = PAGE_DEFAULT,
    after_id: AfterId = 0,
    before_id: BeforeId = None,
) -> dict[str, Any]:
    """Tasks in id order, `limit` at a time: the next page starts after `next_after_id` (None:
    this is the last), the previous one ends before `prev_before_id` (None: this is the first)."""
    return task_page(ctx, batch_id, state, reason, limit, after_id, before_id)


def task_page(
    ctx: Context,
    batch_id: str,
    state: str | None = None,
    reason: str | None = None,
    limit: int = PAGE_DEFAULT,
    after_id: int = 0,
    before_id: int | None = None,
    batch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One page of a batch's tasks with the seed's labels; the API and the console show this.
    `batch`: the batch when the caller has it already (its labels' scheduled time)."""
    page = service.task_page(ctx.engine, batch_id, state, reason, limit, after_id, before_id)
    if batch is None:
        batch = service.show_batch(ctx.engine, batch_id, counts=False)
    items = [task_view(ctx.settings, t, batch) for t in page.items]
    return {
        "items": items,
        "next_after_id": page.next_after_id,
        "prev_before_id": page.prev_before_id,
    }


@router.post(
    "/batches/{batch_id}/cancel",
    summary="CancelOTATaskByJob / CancelOTAStrategyByJob",
    responses=UNAVAILABLE,
)
async def cancel_batch(
    ctx: Ctx, batch_id: BatchId, body: Annotated[CancelBody | None, Body()] = None
) -> dict[str, Any]:
    """Static: scheduled tasks only by default; dynamic: the policy only by default.
    scope all (or the three CancelQueued/Notified/InProgressTask flags) cancels every ongoing
    task too."""
    all_tasks = (body or CancelBody.model_validate({})).all_tasks()
    return _sent(await batch_signals.cancel_batch(ctx, batch_id, all_tasks))


@router.post(
    "/batches/{batch_id}/pause",
    summary="Pause: push nothing new until resumed (pushed devices finish)",
    responses=UNAVAILABLE,
)
async def pause_batch(ctx: Ctx, batch_id: BatchId) -> dict[str, Any]:
    return _sent(await batch_signals.pause_batch(ctx, batch_id))


@router.post(
    "/batches/{batch_id}/resume",
    summary="Resume a paused batch at its rate",
    responses=UNAVAILABLE,
)
async def resume_batch(ctx: Ctx, batch_id: BatchId) -> dict[str, Any]:
    return _sent(await batch_signals.resume_batch(ctx, batch_id))


@router.post(
    "/batches/{batch_id}/promote",
    summary="Promote: open the phase gate the batch waits at (its next phase is pushed)",
    responses=UNAVAILABLE,
)
async def promote_batch(ctx: Ctx, batch_id: BatchId) -> dict[str, Any]:
    """For a batch created with phases (`--promote manual`, or ahead of `promote_at`). 409 when
    it has none, is over, or its pacer says it is not waiting at a gate. 200 with the receipt,
    as cancel, pause and resume answer: the signal is delivered, and the gate opens when the
    workflow next runs; `at_gate` false when no worker answered whether it waits at one (sent
    anyway: the pacer ignores a promote away from a gate)."""
    return _sent(await batch_signals.promote_batch(ctx, batch_id))


def _sent(result: dict[str, Any]) -> dict[str, Any]:
    """A signal's receipt (cancel, pause, resume, promote) as JSON."""
    return {**result, "signaled_at": result["signaled_at"].isoformat()}
