"""/api/v1/products: register and list products, their devices' versions and modules."""

from __future__ import annotations

from typing import Any

from ota.api.common import Ctx, api_router
from ota.api.params import ModuleQuery, ProductKey
from ota.api.schemas import ProductCreate
from ota.domain import DEFAULT_MODULE, validate_module
from ota.services import devices, firmware
from ota.services import products as service

router = api_router("products")


@router.get("/products", summary="List products")
def list_products(ctx: Ctx) -> list[dict[str, Any]]:
    return [service.product_public(p) for p in service.list_products(ctx.engine)]


@router.post("/products", status_code=201, summary="CreateProduct")
def add_product(ctx: Ctx, body: ProductCreate) -> dict[str, Any]:
    return service.product_public(service.add_product(ctx.engine, body.product_key, body.name))


@router.get("/products/{product_key}", summary="QueryProduct")
def show_product(ctx: Ctx, product_key: ProductKey) -> dict[str, Any]:
    return service.product_public(service.get_product(ctx.engine, product_key))


@router.get(
    "/products/{product_key}/versions",
    summary="The versions the product's devices report: Version number to be upgraded",
)
def product_versions(ctx: Ctx, product_key: ProductKey, module: ModuleQuery = None) -> list[str]:
    if module is not None:
        module = validate_module(module)  # "" is the default module, as everywhere
    return devices.device_versions(ctx.engine, product_key, module)


@router.get(
    "/products/{product_key}/modules",
    summary="Modules in use: those devices report and those firmware was added for",
)
def product_modules(ctx: Ctx, product_key: ProductKey) -> list[str]:
    found = {DEFAULT_MODULE, *devices.product_modules(ctx.engine, product_key)}
    found.update(firmware.firmware_modules(ctx.engine, product_key))
    return sorted(found)
