"""What every API router shares: the Context, the token guard, the documented error shape."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ota.api.auth import require_token
from ota.context import Context

PREFIX = "/api/v1"


class ProblemDetail(BaseModel):
    """RFC 9457 problem details; `field` names the input at fault, `errors` lists them all."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


def _problem(description: str) -> dict[str, Any]:
    return {
        "model": ProblemDetail,
        "description": description,
        "content": {"application/problem+json": {}},
    }


PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: _problem("The body is not what its Content-Type says (JSON that does not parse)"),
    401: _problem("Missing or wrong bearer token"),
    404: _problem("Not found"),
    409: _problem("The current state forbids it (a limit, a duplicate, a batch already running)"),
    422: _problem("Invalid input: `field` names it, `detail` says what is allowed"),
}


# For the operations that start or signal workflows.
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: _problem("Temporal (or another service the operation needs) does not answer")
}


def api_router(tag: str) -> APIRouter:
    return APIRouter(
        prefix=PREFIX, tags=[tag], dependencies=[Depends(require_token)], responses=PROBLEMS
    )


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx  # type: ignore[no-any-return]


Ctx = Annotated[Context, Depends(get_ctx)]


def parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate data read by hand (multipart fields) with FastAPI's own error reporting.
    Lax: every form field is text, so "false" must read as a boolean here."""
    try:
        return model.model_validate(data, strict=False)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
