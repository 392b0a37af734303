"""/api/v1/products/{pk}/devices: register devices, import a CSV, list them with their versions."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import Query, Request

from ota.api.common import UNAVAILABLE, Ctx, api_router
from ota.api.params import AfterId, BeforeId, DeviceName, Limit, ProductKey
from ota.api.schemas import DeviceCreate, DeviceEnabled
from ota.domain import DEFAULT_MODULE
from ota.errors import InvalidInput, renamed
from ota.services import device_identity as identity
from ota.services import devices as service
from ota.services.paging import PAGE_DEFAULT

router = api_router("devices")


# The services name path parameters as the CLI does; the problem names what the URL holds.
FIELDS = {"product": "product_key", "device": "device_name"}
CSV_MAX = 16 * 1024 * 1024  # about 500,000 devices
# One device a line, name[,version[,module]]: a pattern for the lines breaks schemathesis 4.32.5's
# generator (an internal recursion error), so the schema says the shortest file only.
CSV_SCHEMA = {"type": "string", "minLength": 4}


@router.get("/products/{product_key}/devices", summary="List devices, version per module: one page")
def list_devices(
    ctx: Ctx,
    product_key: ProductKey,
    module: str = DEFAULT_MODULE,
    version: Annotated[
        list[str] | None, Query(description="Only devices on these versions.")
    ] = None,
    online: bool | None = None,
    limit: Limit = PAGE_DEFAULT,
    after_id: AfterId = 0,
    before_id: BeforeId = None,
) -> dict[str, Any]:
    """`version` (repeatable) picks devices whose `module` runs one of them: the devices the
    Validate Firmware dialog offers once versions are chosen. Devices in registration order;
    the next page starts after `next_after_id` (None: this is the last), the previous one ends
    before `prev_before_id` (None: this is the first)."""
    with renamed(FIELDS):
        page = service.device_page(
            ctx.engine,
            product_key,
            versions=version,
            module=module,
            online=online,
            limit=limit,
            after_id=after_id,
            before_id=before_id,
        )
    return {
        "items": [v.to_dict() for v in page.items],
        "next_after_id": page.next_after_id,
        "prev_before_id": page.prev_before_id,
    }


@router.post(
    "/products/{product_key}/devices",
    status_code=201,
    summary="RegisterDevice",
    responses=UNAVAILABLE,
)
def add_device(ctx: Ctx, product_key: ProductKey, body: DeviceCreate) -> dict[str, Any]:
    with renamed(FIELDS):
        view = service.add_device(
            ctx.engine, ctx.settings, product_key, body.name, body.version, body.module
        )
    return view.to_dict()


@router.post(
    "/products/{product_key}/devices/import",
    status_code=201,
    summary="BatchRegisterDevice: a CSV of name,version[,module]; all or none",
    responses=UNAVAILABLE,
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": CSV_SCHEMA}}}
    },
)
async def import_devices(ctx: Ctx, product_key: ProductKey, request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > CSV_MAX:
            raise InvalidInput("file", f"must be at most {CSV_MAX // (1024 * 1024)} MB")
    with renamed(FIELDS):
        text = body.decode("utf-8", "replace")
        registered = await anyio.to_thread.run_sync(
            service.import_devices, ctx.engine, ctx.settings, product_key, text
        )
    return {
        "added": len(registered),
        "devices": [{"name": n, "secret": s} for n, s in registered.secrets.items()],
        "broker": registered.broker,
    }


@router.get(
    "/products/{product_key}/devices/{device_name:device}/credentials",
    summary="The device's MQTT connection parameters and its DeviceSecret",
)
def device_credentials(
    ctx: Ctx, product_key: ProductKey, device_name: DeviceName
) -> dict[str, Any]:
    with renamed(FIELDS):
        return identity.credentials(ctx.engine, ctx.settings, product_key, device_name)


@router.put(
    "/products/{product_key}/devices/{device_name:device}/enabled",
    summary="EnableThing / DisableThing: a disabled device is dropped and refused by the broker",
    responses=UNAVAILABLE,
)
def set_enabled(
    ctx: Ctx, product_key: ProductKey, device_name: DeviceName, body: DeviceEnabled
) -> dict[str, Any]:
    with renamed(FIELDS):
        return identity.set_enabled(
            ctx.engine, ctx.settings, product_key, device_name, body.enabled
        )


@router.post(
    "/products/{product_key}/devices/{device_name:device}/rotate-secret",
    summary="ResetDeviceSecret: a new secret; the old one stops working at once",
    responses=UNAVAILABLE,
)
def rotate_secret(ctx: Ctx, product_key: ProductKey, device_name: DeviceName) -> dict[str, Any]:
    with renamed(FIELDS):
        return identity.rotate_secret(ctx.engine, ctx.settings, product_key, device_name)


@router.delete(
    "/products/{product_key}/devices/{device_name:device}",
    summary="DeleteDevice: refused while one of its tasks is active",
    responses=UNAVAILABLE,
)
def delete_device(ctx: Ctx, product_key: ProductKey, device_name: DeviceName) -> dict[str, Any]:
    with renamed(FIELDS):
        return identity.delete_device(ctx.engine, ctx.settings, product_key, device_name)


@router.post(
    "/broker/sync",
    summary="Make the broker's users and ACLs agree with the registry",
    responses=UNAVAILABLE,
)
def sync_broker(ctx: Ctx) -> dict[str, Any]:
    return identity.sync(ctx.engine, ctx.settings).to_dict()
