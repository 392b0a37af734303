"""/api/v1/firmware: add (a streamed multipart upload), check, diff, list, show, delete."""

from __future__ import annotations

from functools import partial
from typing import Any, BinaryIO, cast

import anyio.to_thread
from fastapi import Request, Response

from ota.api.common import Ctx, api_router, parse
from ota.api.params import AfterId, BeforeId, FirmwareId, Limit
from ota.api.schemas import DiffCreate, FirmwareCheck, FirmwareFields
from ota.api.upload import MultipartStream, ThreadReader
from ota.errors import InvalidInput, renamed
from ota.services import diff
from ota.services import firmware as service
from ota.services.paging import PAGE_DEFAULT
from ota.services.products import get_product
from ota.storage import format_size

router = api_router("firmware")
# check_firmware_input names the product "product"; the form calls it product_key.
FIELDS = {"product": "product_key"}
# create_diff names its ends as the CLI's --from and --to; the body says from_id and to_id.
DIFF_FIELDS = {"from": "from_id", "to": "to_id"}
FORM_OVERHEAD = 1024 * 1024  # headers and metadata around the file in a multipart body


def _upload_schema() -> dict[str, Any]:
    schema = FirmwareFields.model_json_schema()
    schema["properties"]["file"] = {
        "type": "string",
        "format": "binary",
        "description": "Up to 1,000 MB: .bin, .tar, .gz, .tar.gz, .zip or .gzip. "
        "Send it after the other fields: they are checked before it is read.",
    }
    schema.setdefault("required", []).append("file")
    # The file part's name must end in one of the extensions: say so where OpenAPI can.
    disposition = {"example": 'form-data; name="file"; filename="firmware.bin"'}
    encoding = {"file": {"headers": {"Content-Disposition": disposition}}}
    form = {"schema": schema, "encoding": encoding}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": form}}}


@router.get("/firmware", summary="ListOTAFirmware: one page")
def list_firmware(
    ctx: Ctx,
    product_key: str | None = None,
    limit: Limit = PAGE_DEFAULT,
    after_id: AfterId = 0,
    before_id: BeforeId = None,
) -> dict[str, Any]:
    """Firmware in id order, `limit` at a time: the next page starts after `next_after_id`
    (None: this is the last), the previous one ends before `prev_before_id` (None: the first)."""
    page = service.firmware_page(ctx.engine, product_key, limit, after_id, before_id)
    return {
        "items": [service.firmware_public(fw) for fw in page.items],
        "next_after_id": page.next_after_id,
        "prev_before_id": page.prev_before_id,
    }


@router.get("/firmware/{firmware_id:int}", summary="QueryOTAFirmware")
def show_firmware(ctx: Ctx, firmware_id: FirmwareId) -> dict[str, Any]:
    return service.firmware_public(service.get_firmware(ctx.engine, firmware_id))


@router.post("/firmware/check", summary="Check Add Firmware's fields without uploading")
def check_firmware(ctx: Ctx, body: FirmwareCheck) -> dict[str, Any]:
    """The console asks this before it starts a long upload, to show mistakes at once."""
    with renamed(FIELDS):
        spec = service.check_firmware_input(**body.service_kwargs())
        get_product(ctx.engine, spec.product_key)
        service.check_not_added(ctx.engine, spec)
    limit = ctx.settings.max_firmware_bytes
    if body.file_size is not None and body.file_size > limit:
        raise InvalidInput("file", f"must be at most {format_size(limit)}")
    if body.file_size == 0:
        raise InvalidInput("file", "is empty")
    return {"ok": True, "version": spec.version, "module": spec.module}


@router.post(
    "/firmware",
    status_code=201,
    summary="CreateOTAFirmware: upload a firmware file with its metadata",
    openapi_extra=_upload_schema(),
)
async def add_firmware(ctx: Ctx, request: Request) -> dict[str, Any]:
    """The metadata fields come first and are checked before the file is read; the file is
    then streamed to storage as it arrives (bounded memory, even for 1,000 MB)."""
    limit = ctx.settings.max_firmware_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise InvalidInput("file", f"must be at most {format_size(limit)}")
    stream = MultipartStream(request)
    with renamed(FIELDS):
        file_name = await stream.next_file()
        form: FirmwareFields = parse(FirmwareFields, stream.fields_flat())
        if file_name is None:
            raise InvalidInput("file", "choose a firmware file (the form has no file part)")
        service.check_firmware_input(file_name=file_name, **form.service_kwargs())
        fw = await anyio.to_thread.run_sync(
            partial(
                service.add_firmware,
                ctx.engine,
                ctx.store,
                ctx.settings,
                src=cast(BinaryIO, ThreadReader(stream)),  # read() is all it uses
                file_name=file_name,
                need_verify=form.need_verify,
                ext_data=form.ext(),
                **form.service_kwargs(),
            )
        )
    return service.firmware_public(fw)


@router.post(
    "/firmware/diff",
    status_code=201,
    summary="Make a differential package (bsdiff) from one full firmware to another and add it",
)
async def add_diff(ctx: Ctx, body: DiffCreate) -> dict[str, Any]:
    """Devices on from_id's version get it with isDiff=1; the SDK patches its installed image
    and checks the result against to_id's SHA-256 before installing."""
    with renamed(DIFF_FIELDS):
        # bsdiff takes seconds to minutes of one CPU: off the event loop.
        result = await anyio.to_thread.run_sync(
            partial(
                diff.create_diff,
                ctx.engine,
                ctx.store,
                ctx.settings,
                body.from_id,
                body.to_id,
                name=body.name,
                description=body.description,
                need_verify=body.need_verify,
            )
        )
    return service.firmware_public(result.firmware) | {
        "source_size": result.source_size,
        "target_size": result.target_size,
        "saved_bytes": result.saved_bytes,
        "seconds": round(result.seconds, 2),
    }


@router.delete("/firmware/{firmware_id:int}", status_code=204, summary="DeleteOTAFirmware")
def delete_firmware(ctx: Ctx, firmware_id: FirmwareId) -> Response:
    with renamed({"id": "firmware_id"}):  # the CLI's argument is `id`, the URL's firmware_id
        service.delete_firmware(ctx.engine, ctx.store, firmware_id)
    return Response(status_code=204)
