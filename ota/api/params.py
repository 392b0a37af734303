"""Path and query parameters, with the rules the services enforce written into the schema.

The services keep the checks (the CLI calls them too); the schema reads the same constants, so a
generated client can check a value before it calls, and the two cannot drift apart. Ids are
bounded by FastAPI itself: there is no service rule for a number no column can hold.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path, Query
from starlette.convertors import StringConvertor, register_url_convertor

from ota.domain import BATCH_ID_RE, DEVICE_NAME_RE, ID_MAX, ID_MIN, MODULE_RE, RESERVED_DEVICE_NAMES
from ota.services.paging import PAGE_MAX
from ota.services.products import PRODUCT_KEY_RE


def matching(regex: re.Pattern[str], or_empty: bool = False) -> dict[str, Any]:
    """The regex as a JSON Schema pattern; ours are anchored and ECMA-compatible. or_empty: the
    service reads "" as "not given" (module: default; version: unknown)."""
    if or_empty:
        return {"pattern": f"^({regex.pattern.removeprefix('^').removesuffix('$')})?$"}
    return {"pattern": regex.pattern}


# Routes say {firmware_id:int}: only digits reach the route, so /firmware/check is not an id and
# a 405's Allow lists what the path really takes.
FirmwareId = Annotated[int, Path(ge=ID_MIN, le=ID_MAX, description="The firmware's id.")]
FirmwareIdQuery = Annotated[
    int | None, Query(ge=ID_MIN, le=ID_MAX, description="Only this firmware's batches.")
]
AfterId = Annotated[
    int, Query(ge=0, le=ID_MAX, description="The previous page's next_after_id; 0: the first.")
]
BeforeId = Annotated[
    int | None,
    Query(
        ge=0,
        le=ID_MAX,
        description="The next page's prev_before_id: the page before it (not with after_id).",
    ),
]
Limit = Annotated[
    int,
    Query(
        ge=1,
        le=PAGE_MAX,
        description=f"Rows in the page, at most {PAGE_MAX}: longer lists are read a page at a "
        "time, following next_after_id.",
    ),
]
# The batch list's cursors are batch ids: it is newest first, and batch ids are random.
AfterBatch = Annotated[
    str | None,
    Query(
        pattern=BATCH_ID_RE.pattern,
        description="The previous page's next_after_id (a batch id); none: the first page.",
    ),
]
BeforeBatch = Annotated[
    str | None,
    Query(
        pattern=BATCH_ID_RE.pattern,
        description="The next page's prev_before_id: the page before it (not with after_id).",
    ),
]
ProductKey = Annotated[
    str, Path(description="The product's ProductKey.", json_schema_extra=matching(PRODUCT_KEY_RE))
]


class DeviceNameConvertor(StringConvertor):
    """{device_name:device}: any segment but a reserved name, so POST .../devices/import is
    the import alone and its 405 does not offer DELETE (the device route's method)."""

    regex = "(?!(" + "|".join(map(re.escape, RESERVED_DEVICE_NAMES)) + ")$)[^/]+"


register_url_convertor("device", DeviceNameConvertor())
DeviceName = Annotated[
    str, Path(description="The device's DeviceName.", json_schema_extra=matching(DEVICE_NAME_RE))
]
BatchId = Annotated[
    str, Path(description="The batch's id.", json_schema_extra=matching(BATCH_ID_RE))
]
ModuleQuery = Annotated[
    str | None,
    Query(description="A module name.", json_schema_extra=matching(MODULE_RE, or_empty=True)),
]
