"""The console's pages: server-rendered from the same service functions the API and CLI use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from ota.api.batch_form import batch_form, option_facts
from ota.api.batches import batch_page, task_page
from ota.api.common import get_ctx
from ota.api.console_auth import require_login
from ota.api.views import BATCH_STATE_LABELS, batch_view, workflow_url
from ota.batch_options import retry_text
from ota.context import Context
from ota.domain import (
    BATCH_ID_RE,
    ID_MAX,
    ID_MIN,
    OPEN_BATCH_STATES,
    REASON_LABELS,
    TaskReason,
    TaskState,
)
from ota.errors import InvalidInput
from ota.labels import STATE_LABELS
from ota.services import batches, devices, firmware, products

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_login)])

FIRMWARE_STATES = {
    "unverified": "Unverified",
    "verifying": "Verifying",
    "verified": "Verified",
    "verify_failed": "Verification failed",
}
PAGE = 50
# The API's bounds (ota.api.params): a number no id column holds is a 422 page, not a crash of
# the database driver.
FirmwareId = Annotated[int, Path(ge=ID_MIN, le=ID_MAX)]
AfterId = Annotated[int, Query(ge=0, le=ID_MAX)]
BeforeId = Annotated[int | None, Query(ge=0, le=ID_MAX)]
BatchCursor = Annotated[str, Query(pattern=f"^({BATCH_ID_RE.pattern[1:-1]})?$")]


def _render(request: Request, name: str, **context: Any) -> Response:
    ctx: Context = get_ctx(request)
    context.setdefault("temporal_ui", workflow_url(ctx.settings, "x").rsplit("/workflows/", 1)[0])
    return request.app.state.templates.TemplateResponse(request, name, context)


@router.get("/")
def home() -> Response:
    return RedirectResponse("/firmware", status_code=303)


@router.get("/firmware")
def firmware_list(request: Request, after_id: AfterId = 0, before_id: BeforeId = None) -> Response:
    """One page of firmware, oldest first as uploaded (the API's order)."""
    ctx = get_ctx(request)
    page = firmware.firmware_page(
        ctx.engine, limit=PAGE, after_id=after_id, before_id=_before(after_id, before_id)
    )
    return _render(
        request,
        "firmware_list.html",
        firmware=[firmware.firmware_public(fw) for fw in page.items],
        next_after_id=page.next_after_id,
        prev_before_id=page.prev_before_id,
        products=[products.product_public(p) for p in products.list_products(ctx.engine)],
        firmware_states=FIRMWARE_STATES,
        **batch_form(),
    )


@router.get("/firmware/{firmware_id}")
def firmware_detail(
    request: Request,
    firmware_id: FirmwareId,
    after_id: BatchCursor = "",
    before_id: BatchCursor = "",
) -> Response:
    """The firmware and one page of its batches, newest first."""
    ctx = get_ctx(request)
    fw = firmware.firmware_public(firmware.get_firmware(ctx.engine, firmware_id))
    before = None if after_id else before_id or None
    try:
        page = batch_page(ctx, firmware_id, None, PAGE, after_id or None, before)
    except InvalidInput:  # a batch deleted since the link was made: the first page instead
        page = batch_page(ctx, firmware_id, None, PAGE)
    return _render(
        request,
        "firmware_detail.html",
        fw=fw,
        batches=page["items"],
        next_after_id=page["next_after_id"],
        prev_before_id=page["prev_before_id"],
        firmware_states=FIRMWARE_STATES,
        **batch_form(),
    )


def _batch_context(
    request: Request, batch_id: str, state: str, reason: str, after_id: int, before_id: int | None
) -> dict[str, Any]:
    state, reason = _filters(state, reason)
    before_id = _before(after_id, before_id)
    ctx = get_ctx(request)
    batch = batch_view(ctx.settings, batches.show_batch(ctx.engine, batch_id))
    page = task_page(ctx, batch_id, state or None, reason or None, PAGE, after_id, before_id, batch)
    return {
        "batch": batch,
        "fw": firmware.firmware_public(firmware.get_firmware(ctx.engine, batch["firmware_id"])),
        "tasks": page["items"],
        "next_after_id": page["next_after_id"],
        "prev_before_id": page["prev_before_id"],
        "after_id": after_id,
        "before_id": before_id,
        "state": state,
        "reason": reason,
        "state_labels": STATE_LABELS,
        "batch_states": BATCH_STATE_LABELS,
        "live": batch["state"] in OPEN_BATCH_STATES,
        "option_facts": option_facts(batch),
        "retry": retry_text(batch["retry_interval_minutes"], batch["max_retries"]),
        "now": datetime.now(UTC),
    }


def _before(after_id: int, before_id: int | None) -> int | None:
    """A page's cursor: an address with both is hand-made, and the next page wins."""
    return None if after_id else before_id


def _filters(state: str, reason: str) -> tuple[str, str]:
    # Unknown values are dropped rather than failing a page someone bookmarked.
    state = state if state in {s.value for s in TaskState} else ""
    reason = reason if reason in {r.value for r in TaskReason} else ""
    return state, reason


@router.get("/batches/{batch_id}")
def batch_detail(
    request: Request,
    batch_id: str,
    state: str = "",
    reason: str = "",
    after_id: AfterId = 0,
    before_id: BeforeId = None,
) -> Response:
    context = _batch_context(request, batch_id, state, reason, after_id, before_id)
    reasons = {r.value: REASON_LABELS[r] for r in TaskReason}
    return _render(request, "batch_detail.html", reasons=reasons, **context)


@router.get("/batches/{batch_id}/live")
def batch_live(
    request: Request,
    batch_id: str,
    state: str = "",
    reason: str = "",
    after_id: AfterId = 0,
    before_id: BeforeId = None,
) -> Response:
    """The part of Batch Details that changes while the batch runs; the page polls it."""
    context = _batch_context(request, batch_id, state, reason, after_id, before_id)
    return _render(request, "_batch_live.html", **context)


@router.get("/products")
def product_list(request: Request) -> Response:
    ctx = get_ctx(request)
    counts = devices.fleet_counts(ctx.engine)
    rows = [
        {**products.product_public(p), **counts.get(p.product_key, {"devices": 0, "online": 0})}
        for p in products.list_products(ctx.engine)
    ]
    return _render(request, "products.html", products=rows)


DEVICE_STATUS = {"online": True, "offline": False}


@router.get("/products/{product_key}/devices")
def device_list(
    request: Request,
    product_key: str,
    version: str = "",
    status: str = "",
    after_id: AfterId = 0,
    before_id: BeforeId = None,
) -> Response:
    """One page of the product's devices; the counts are the whole filter's."""
    ctx = get_ctx(request)
    product = products.product_public(products.get_product(ctx.engine, product_key))
    versions = devices.device_versions(ctx.engine, product_key)
    # Unknown values are dropped rather than failing a page someone bookmarked.
    version = version if version in versions else ""
    status = status if status in DEVICE_STATUS else ""
    wanted = [version] if version else None
    page = devices.device_page(
        ctx.engine,
        product_key,
        versions=wanted,
        online=DEVICE_STATUS.get(status),
        limit=PAGE,
        after_id=after_id,
        before_id=_before(after_id, before_id),
    )
    counts = devices.device_counts(ctx.engine, product_key, versions=wanted)
    return _render(
        request,
        "devices.html",
        product=product,
        devices=page.items,
        next_after_id=page.next_after_id,
        prev_before_id=page.prev_before_id,
        counts=counts,
        modules=devices.product_modules(ctx.engine, product_key),
        versions=versions,
        version=version,
        status=status,
    )
