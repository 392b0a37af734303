"""The Batch Update request body (CreateOTAStaticUpgradeJob / CreateOTADynamicUpgradeJob), made
from ota.batch_options: one field per option, under the option's API name and its cloud alias,
with the option's range, choices and pattern in the OpenAPI schema. Only types are checked here;
ota.batch_options.check_options judges the values, for the CLI and the API alike."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, create_model

from ota.api.params import matching
from ota.api.schemas import Body, one_or_more, replace_schema
from ota.batch_options import DEFAULTS, OPTIONS, TYPES, Option, read_options


def _type(opt: Option) -> Any:
    """The option's type, widened by what clients may send instead: one version for a list
    (the cloud's form), a spelling ("10m", "GRAY"), or the cloud's own type (epoch ms)."""
    kind = TYPES[opt.name]
    if opt.many and kind == list[int]:
        # JSON's 10.0 is a whole number too (the schema says integer): read_option takes it.
        return list[int | float] | int | float | str
    if opt.many:  # a list, one item, or a comma-separated text (the console's)
        return kind | str
    if opt.spellings or opt.refused:
        kind = kind | str
    if opt.cloud_type is not None:
        kind = kind | opt.cloud_type
    return kind


def _schema(opt: Option) -> dict[str, Any]:
    """What the schema says of the option's values: the same rule check_options applies."""
    if opt.many and opt.pattern is not None:
        return one_or_more(opt.pattern)
    if opt.many:  # whole numbers, or one text of them ("1,10,100", as the console sends)
        item = {"type": "integer", "minimum": opt.low, "maximum": opt.high}
        return {"anyOf": [{"type": "array", "items": item}, item, {"type": "string"}]}
    if opt.choices:
        return {"enum": list(dict.fromkeys([*opt.choices, *opt.spellings]))}
    if opt.low is not None:
        return {"minimum": opt.low, "maximum": opt.high}
    if opt.pattern is not None:
        return matching(opt.pattern)
    return {}


def _replace_schema(opt: Option) -> Any:
    """A list-or-one option's schema replaces pydantic's (anyOf array, string); the others add
    their rule to it."""
    wanted = _schema(opt)
    if not opt.many:
        return wanted
    return lambda schema: replace_schema(schema, **wanted)


def _field(opt: Option) -> Any:
    description = opt.help + (f" Cloud API name: `{opt.cloud}`." if opt.cloud else "")
    names = (opt.api, opt.cloud) if opt.cloud else (opt.api,)
    default: dict[str, Any] = (
        {"default_factory": list} if opt.many else {"default": DEFAULTS[opt.name]}
    )
    return (
        _type(opt) | None,  # null: the default (a form's blank)
        Field(
            **default,
            validation_alias=AliasChoices(*names),
            description=description,
            json_schema_extra=_replace_schema(opt),
        ),
    )


BatchCreate: type[Body] = create_model(  # type: ignore[call-overload]
    "BatchCreate",
    __base__=Body,
    __doc__="CreateOTAStaticUpgradeJob / CreateOTADynamicUpgradeJob: the batch's options.",
    **{opt.api: _field(opt) for opt in OPTIONS},
)


def body_options(body: Body) -> dict[str, Any]:
    """The BatchOptions fields of a request, in their stored spelling; not yet checked."""
    sent = body.model_dump()
    return read_options({opt.name: sent[opt.api] for opt in OPTIONS})
