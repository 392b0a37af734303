"""/api/v1/firmware/{id}/verifications: validate firmware on a few devices (CreateOTAVerifyJob)."""

from __future__ import annotations

from typing import Any

from ota.api.common import UNAVAILABLE, Ctx, api_router
from ota.api.params import FirmwareId
from ota.api.schemas import VerifyCreate
from ota.api.views import batch_view
from ota.errors import renamed
from ota.services import verify as service

router = api_router("verifications")
FIELDS = {"timeout": "timeout_minutes", "device": "device_names"}


@router.post(
    "/firmware/{firmware_id:int}/verifications",
    status_code=201,
    summary="CreateOTAVerifyJob",
    responses=UNAVAILABLE,
)
async def create_verification(
    ctx: Ctx, firmware_id: FirmwareId, body: VerifyCreate
) -> dict[str, Any]:
    """Update the chosen devices; the firmware becomes verified if all of them update."""
    with renamed(FIELDS):
        shown = await service.start_verify(
            ctx, firmware_id, body.device_names, body.timeout_minutes
        )
    return batch_view(ctx.settings, shown)
