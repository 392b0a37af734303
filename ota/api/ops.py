"""/healthz (the process is alive) and /readyz (its dependencies answer) for the API process.

No token: a load balancer or an orchestrator asks them. They are kept out of the OpenAPI
document, and the answers carry no secret (ota.ops.probes).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ota.identity.accounts import ServiceRole
from ota.ops.http import readiness_response
from ota.ops.probes import Probes

router = APIRouter(include_in_schema=False)

READY_CHECKS = ("database", "temporal", "broker", "storage")


def api_probes(request: Request) -> Probes:
    """One Probes per app, over the app's Context: its engine, store and Temporal client."""
    state = request.app.state
    if getattr(state, "probes", None) is None:
        ctx = state.ctx
        # The API talks to the broker as the admin (device identity); the engine is the app's.
        state.probes = Probes(ctx, engine=lambda: ctx.engine, broker_roles=(ServiceRole.ADMIN,))
    return state.probes  # type: ignore[no-any-return]


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"alive": True})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    return await readiness_response(api_probes(request).checks(*READY_CHECKS))
