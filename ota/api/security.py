"""/api/v1/products/{pk}/secure-update, rotate-key, retire-key: Secure Update and its keys
(ota.services.security; the procedure is docs/security.md)."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from ota.api.common import Ctx, api_router
from ota.api.params import ProductKey
from ota.api.problems import Problem
from ota.services import products, security

router = api_router("products")
# The function the secure-update service is expected to offer; until it exists this is a 501.
SERVICE, FUNCTION = "ota.services.security", "set_secure_update"


class SecureUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `"enabled": 0` is not a boolean
    enabled: bool


def _toggle() -> Any:
    try:
        module = importlib.import_module(SERVICE)
    except ModuleNotFoundError as exc:
        if exc.name != SERVICE:
            raise
        module = None
    toggle = getattr(module, FUNCTION, None)
    if toggle is None:
        raise Problem(
            501,
            "Not implemented",
            "Secure Update is not available yet: signing keys arrive with "
            f"{SERVICE}.{FUNCTION}(engine, settings, product_key, enabled)",
            "urn:ota:problem:not-implemented",
        )
    return toggle


@router.put(
    "/products/{product_key}/secure-update",
    summary="Activate or deactivate Secure Update (firmware signatures) for a product",
    responses={501: {"description": "Secure Update keys are not implemented yet"}},
)
def set_secure_update(ctx: Ctx, product_key: ProductKey, body: SecureUpdate) -> dict[str, Any]:
    products.get_product(ctx.engine, product_key)  # 404 first: the product must exist
    toggle = _toggle()
    toggle(ctx.engine, ctx.settings, product_key, body.enabled)
    return products.product_public(products.get_product(ctx.engine, product_key))


@router.post(
    "/products/{product_key}/rotate-key",
    summary="Start a key rotation: a new key pair signs from now on, except firmware added "
    "with sign_with previous (the carrier of the new public key)",
)
def rotate_key(ctx: Ctx, product_key: ProductKey) -> dict[str, Any]:
    """409 when the product has no key yet (turn Secure Update on) or is already rotating."""
    return security.rotate_key(ctx.engine, ctx.settings, product_key)


@router.post(
    "/products/{product_key}/retire-key",
    summary="End a key rotation: forget the previous key (devices still on it can no longer "
    "verify)",
)
def retire_key(
    ctx: Ctx,
    product_key: ProductKey,
    force: Annotated[
        bool, Query(description="Even while a batch of a carrier firmware is active.")
    ] = False,
) -> dict[str, Any]:
    """409 when no rotation is under way, or (without force) while a batch still pushes firmware
    signed with the previous key."""
    return security.retire_previous_key(ctx.engine, product_key, force)
