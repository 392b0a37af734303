"""Request bodies: our snake_case names, with the platform's cloud API names accepted as aliases.

Only types are checked here; every range and rule is checked by the same service and domain
functions the CLI calls, so a message reads the same wherever it comes from. The schema states
those rules too (pattern, minimum, enum...), read from the constants the checks use, so a
generated client can check a value before it calls.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ota.api.params import matching
from ota.batch_options import OPTIONS
from ota.domain import (
    DESCRIPTION_MAX,
    FIRMWARE_EXTENSIONS,
    FIRMWARE_NAME_RE,
    ID_MAX,
    ID_MIN,
    MODULE_RE,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    VERSION_RE,
    FirmwareType,
    SignMethod,
)
from ota.errors import InvalidInput
from ota.services.devices import DEVICE_NAME_RE
from ota.services.firmware import EXT_DATA_MAX_BYTES, EXT_KEY_MAX, FILE_NAME_MAX
from ota.services.products import PRODUCT_KEY_RE, PRODUCT_NAME_MAX
from ota.services.security import SIGN_WITH, SIGN_WITH_CHOICES
from ota.services.verify import MAX_DEVICES

TYPE_CODES = {"0": "full", "1": "diff"}  # CreateOTAFirmware's Type


# snake_case name -> the cloud API's name, for problem details ("field" and its "alias"). The
# batch options' are their model's (ota/api/batch_body.py); the other bodies' are added by alias().
CLOUD_NAMES: dict[str, str] = {o.api: o.cloud for o in OPTIONS if o.cloud}


def alias(name: str, cloud: str, description: str, **kw: Any) -> Any:
    """A field named `name`, also accepted as the cloud API's `cloud`."""
    CLOUD_NAMES.setdefault(name, cloud)
    return Field(
        validation_alias=AliasChoices(name, cloud),
        description=f"{description} Cloud API name: `{cloud}`.",
        **kw,
    )


def between(low: int, high: int) -> dict[str, Any]:
    return {"minimum": low, "maximum": high}


def items(regex: re.Pattern[str], **limits: int) -> dict[str, Any]:
    """A list whose every item matches `regex`; limits: minItems, maxItems."""
    return {"items": {"type": "string", **matching(regex)}, **limits}


def _any_case(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


# What the services' isprintable() checks keep out, as far as a portable regex can say it:
# controls, spaces other than " ", format characters, surrogates and private use.
NOT_PRINTABLE = (
    r"\x00-\x1f\x7f-\xa0\xad\u0600-\u0605\u061c\u06dd\u070f\u1680\u180e\u2000-\u200f"
    r"\u2028-\u202f\u205f-\u206f\u3000\ue000-\uf8ff\ufeff\ufff0-\uffff"
)
EXTENSIONS = "|".join(_any_case(ext[1:]) for ext in FIRMWARE_EXTENSIONS)
# A file name, not a path: the storage key keeps the last part only.
FILE_NAME_RE = re.compile(rf"^[^{NOT_PRINTABLE}/\\]{{1,{FILE_NAME_MAX - 8}}}\.({EXTENSIONS})$")
# Kept as given, stripped: so neither blank nor padded.
PRODUCT_NAME_RE = re.compile(
    rf"^[^{NOT_PRINTABLE} ]([^{NOT_PRINTABLE}]{{0,{PRODUCT_NAME_MAX - 2}}}[^{NOT_PRINTABLE} ])?$"
)
FILE_NAME_MIN = 1 + min(len(ext) for ext in FIRMWARE_EXTENSIONS)  # a.gz


def _as_list(cls: type, value: Any) -> Any:
    """One value or a list: `SrcVersion: "1.0"` and `SrcVersion: ["1.0", "1.1"]` both work."""
    return [value] if isinstance(value, str) else value


def _versions(cls: type, values: list[str]) -> list[str]:
    # The services also take "1.0,1.1" and skip blanks (the CLI's repeated options); the API
    # takes what its schema states, one version an item.
    for value in values:
        if not VERSION_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} must be 1 to 64 characters of lowercase letters, digits, '-', '_' "
                "and '.'"
            )
    return values


def one_or_more(regex: re.Pattern[str]) -> dict[str, Any]:
    """A list of strings matching `regex`, or one such string (the cloud API takes both)."""
    item = {"type": "string", **matching(regex)}
    return {"anyOf": [{"type": "array", "items": item}, item]}


def replace_schema(schema: dict[str, Any], **wanted: Any) -> None:
    """Pydantic's schema of the field's Python type, replaced by what the field accepts."""
    kept: dict[str, Any] = {
        k: schema[k] for k in ("title", "description", "default") if k in schema
    }
    schema.clear()
    schema.update(kept, **wanted)


class Body(BaseModel):
    # A misspelt field is an error naming it, not a silently ignored setting. Strict: JSON has
    # types, and `"enabled": 0` or `"percent": "5"` is not what the schema says (multipart
    # fields are all text: `parse` relaxes it for them).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        # JSON Schema counts 30.0 as an integer (and JSON parsers may write it so); strict
        # pydantic does not. A fraction stays a float and is refused.
        return int(value) if isinstance(value, float) and value.is_integer() else value


class ProductCreate(Body):
    product_key: str = alias(
        "product_key",
        "ProductKey",
        "1 to 64 letters, digits, _ and -.",
        json_schema_extra=matching(PRODUCT_KEY_RE),
    )
    name: str = alias(
        "name",
        "ProductName",
        "1 to 64 characters.",
        json_schema_extra={"minLength": 1, **matching(PRODUCT_NAME_RE)},
    )


class DeviceCreate(Body):
    name: str = alias(
        "name",
        "DeviceName",
        "4 to 32 letters, digits and - _ @ . :",
        json_schema_extra=matching(DEVICE_NAME_RE),
    )
    version: str | None = Field(
        None,
        description="The version the device runs, if known.",
        json_schema_extra=matching(VERSION_RE, or_empty=True),
    )
    module: str = Field(
        "default",
        description="The module that version is of.",
        json_schema_extra=matching(MODULE_RE, or_empty=True),
    )


class DeviceEnabled(Body):
    enabled: bool = Field(description="false: the broker drops the device and refuses it")


class VerifyCreate(Body):
    """CreateOTAVerifyJob: update a few devices first; the firmware is verified if all update."""

    device_names: list[str] = alias(
        "device_names",
        "TargetDeviceName",
        "1 to 100 devices of the firmware's product.",
        json_schema_extra=items(DEVICE_NAME_RE, minItems=1, maxItems=MAX_DEVICES),
    )
    timeout_minutes: int | None = alias(
        "timeout_minutes",
        "TimeoutInMinutes",
        "1 to 1440, counted from the first progress report.",
        default=None,
        json_schema_extra=between(TIMEOUT_MIN, TIMEOUT_MAX),
    )

    _lists = field_validator("device_names", mode="before")(_as_list)


ONGOING_FLAGS = ("CancelQueuedTask", "CancelNotifiedTask", "CancelInProgressTask")


class CancelBody(Body):
    """CancelOTATaskByJob, mapped onto our two scopes (the seed's two Cancel choices)."""

    # all_tasks' rule, stated: the three ongoing-task flags are all set or none is.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {f: {"const": False} for f in ONGOING_FLAGS}},
                {
                    "properties": {f: {"const": True} for f in ONGOING_FLAGS},
                    "required": list(ONGOING_FLAGS),
                },
            ]
        }
    )

    scope: str | None = Field(
        None,
        description="scheduled (default: static: scheduled tasks; dynamic: the policy) or all "
        "(also To Be Pushed, Pushed and In Upgrade tasks).",
        json_schema_extra={"enum": ["scheduled", "all"]},
    )
    CancelScheduledTask: bool = False
    CancelQueuedTask: bool = Field(False, description="With the next two: scope all.")
    CancelNotifiedTask: bool = False
    CancelInProgressTask: bool = False
    CancelUnconfirmedTask: bool = Field(
        False, description="Not supported: no confirmations.", json_schema_extra={"const": False}
    )

    def all_tasks(self) -> bool:
        if self.CancelUnconfirmedTask:
            raise InvalidInput("CancelUnconfirmedTask", "is not supported: tasks need no confirm")
        flags = [getattr(self, flag) for flag in ONGOING_FLAGS]
        if any(flags) and not all(flags):
            raise InvalidInput(
                "CancelQueuedTask",
                "ongoing tasks are canceled together: set CancelQueuedTask, CancelNotifiedTask "
                "and CancelInProgressTask all, or use scope all",
            )
        if self.scope not in (None, "scheduled", "all"):
            raise InvalidInput("scope", "must be scheduled or all")
        return self.scope == "all" or all(flags)


class FirmwareFields(Body):
    """Add Firmware's metadata (multipart fields of the upload, or the JSON of a pre-check)."""

    type: str = alias(
        "type",
        "Type",
        "full or diff (cloud: 0 or 1, a number or a string).",
        default="full",
        json_schema_extra=lambda schema: replace_schema(
            schema, enum=[*FirmwareType, *TYPE_CODES, *map(int, TYPE_CODES)]
        ),
    )
    name: str = alias(
        "name",
        "FirmwareName",
        "4 to 32 letters, digits and _, not starting with _.",
        json_schema_extra=matching(FIRMWARE_NAME_RE),
    )
    product_key: str = alias(
        "product_key",
        "ProductKey",
        "The product it belongs to.",
        json_schema_extra=matching(PRODUCT_KEY_RE),
    )
    module: str | None = alias(
        "module",
        "ModuleName",
        "Default: default.",
        default=None,
        json_schema_extra=matching(MODULE_RE, or_empty=True),
    )
    # "" is "not given" to the services, as an empty form field is.
    version: str | None = Field(
        None,
        description="Firmware Version (full).",
        json_schema_extra=matching(VERSION_RE, or_empty=True),
    )
    src_versions: list[str] = alias(
        "src_versions",
        "SrcVersion",
        "Version number to be upgraded (diff).",
        default_factory=list,
        json_schema_extra=lambda schema: replace_schema(schema, **one_or_more(VERSION_RE)),
    )
    dest_version: str | None = alias(
        "dest_version",
        "DestVersion",
        "Post-upgrade version number (diff).",
        default=None,
        json_schema_extra=matching(VERSION_RE, or_empty=True),
    )
    sign_method: str = alias(
        "sign_method",
        "SignMethod",
        "MD5 or SHA256.",
        default="MD5",
        json_schema_extra={"enum": list(SignMethod)},
    )
    description: str | None = alias(
        "description",
        "FirmwareDesc",
        "Up to 100 characters.",
        default=None,
        json_schema_extra={"maxLength": DESCRIPTION_MAX},
    )
    need_verify: bool = alias(
        "need_verify", "NeedToVerify", "Validate on devices before batches.", default=True
    )
    # `ota firmware add --ext` and `--sign-with`: step 3 of a key rotation (docs/security.md).
    ext_data: dict[str, Any] | None = Field(
        None,
        description="extData for devices: a JSON object of keys and values (in the upload form, "
        'its JSON text, as `ota firmware add --ext KEY=VALUE` gives: `{"kind": "key"}`); at '
        f"most {EXT_DATA_MAX_BYTES} bytes as JSON.",
        json_schema_extra={"propertyNames": {"minLength": 1, "maxLength": EXT_KEY_MAX}},
    )
    sign_with: str | None = Field(
        None,
        description="Secure update: `previous` signs this firmware with the key before the last "
        "rotation (the firmware that carries the new public key: docs/security.md, Key "
        "rotation); only while a rotation is under way. Default: current.",
        json_schema_extra={"enum": list(SIGN_WITH_CHOICES)},
    )

    _lists = field_validator("src_versions", mode="before")(_as_list)
    _checked = field_validator("src_versions")(_versions)

    @field_validator("ext_data", mode="before")
    @classmethod
    def _ext_json(cls, value: Any) -> Any:
        """A form field is text: the object's JSON."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            raise ValueError('must be a JSON object, such as {"kind": "key"}') from None

    def ext(self) -> dict[str, Any]:
        """ext_data as add_firmware takes it: with the sign_with choice under its own key."""
        ext = dict(self.ext_data or {})
        if self.sign_with is not None:
            ext[SIGN_WITH] = self.sign_with
        return ext

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        return TYPE_CODES.get(str(value), value)

    def service_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of check_firmware_input and add_firmware."""
        return self.model_dump(exclude={"need_verify", "file_size", "ext_data", "sign_with"})


class FirmwareCheck(FirmwareFields):
    file_name: str = Field(
        description="The name of the file to upload.",
        json_schema_extra={"minLength": FILE_NAME_MIN, **matching(FILE_NAME_RE)},
    )
    file_size: int | None = Field(
        None, description="Its size in bytes, if known.", json_schema_extra={"minimum": 1}
    )


class DiffCreate(Body):
    """`ota firmware diff`: a differential package made on the server from two full images."""

    from_id: int = Field(
        description="The firmware id of the image the devices run (a full firmware).",
        json_schema_extra=between(ID_MIN, ID_MAX),
    )
    to_id: int = Field(
        description="The firmware id of the image to update to: same product and module.",
        json_schema_extra=between(ID_MIN, ID_MAX),
    )
    name: str | None = Field(
        None,
        description="4 to 32 letters, digits and _, not starting with _ "
        "(default: <to's name>_diff).",
        json_schema_extra=matching(FIRMWARE_NAME_RE),
    )
    description: str | None = Field(
        None, description="Up to 100 characters.", json_schema_extra={"maxLength": DESCRIPTION_MAX}
    )
    need_verify: bool = Field(True, description="Validate on devices before batches.")
