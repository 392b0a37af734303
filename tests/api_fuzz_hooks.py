"""Schemathesis hooks for tests/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

ACCEPTED is the baseline: the few failures that are the schema's limits, not the server's
faults, each with its reason; only what this seed's run meets (a new seed may meet another rule
OpenAPI cannot state). A failure is accepted
by what it is (operation, check, status, the problem's field and detail), not by a message
schemathesis words or by status alone, so a new failure on the same operation is never hidden
by an old one. Anything not listed fails the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import schemathesis


@dataclass(frozen=True)
class Accepted:
    operation: str
    failure: str  # schemathesis' failure class: RejectedPositiveData, AcceptedNegativeData...
    status: int
    field: str | None  # the problem detail's `field`
    detail: str  # a regex the problem's detail must match in full
    reason: str
    typed_body: bool = False  # only when the generated body was no text (null, false, 12...)

    def matches(self, failure: Any, case: Any, response: Any) -> bool:
        if (case.operation.label, type(failure).__name__, response.status_code) != (
            self.operation,
            self.failure,
            self.status,
        ):
            return False
        if self.typed_body and isinstance(case.body, (str, bytes)):
            return False
        if self.field is None:  # no problem detail expected (a body the server accepted)
            return self.status < 400
        try:
            problem = response.json()
        except ValueError:
            return False
        return problem.get("field") == self.field and bool(
            re.fullmatch(self.detail, problem.get("detail", ""))
        )


FIRMWARE = ("POST /api/v1/firmware", "POST /api/v1/firmware/check")
# full needs a version and no source versions, diff needs a dest_version and source versions,
# and version and dest_version must agree: rules between fields, which OpenAPI 3.1 could state
# only with if/then, which schemathesis does not generate from.
CROSS_FIELD = [
    ("version", r"is required for a full firmware"),
    ("dest_version", r"is required for a differential \(diff\) firmware"),
    ("dest_version", r"must equal version when both are given"),
    ("src_versions", r"only a diff firmware has source versions"),
    ("src_versions", r"a diff firmware needs one or more source versions"),
    ("src_versions", r"must not include the target version .+"),
]
BATCHES = "POST /api/v1/firmware/{firmware_id}/batches"
# ota.batch_options checks the options before anything is read, so these come before a 404 of
# the firmware: the seed's rules between options (if/then again), and the schedule's window,
# which depends on the time of the request.
BATCH_RULES = [
    ("percent", r"only a phased batch takes a percentage"),
    ("percent", r"is required for a phased batch \(1 to 100\)"),
    ("device_names", r"a batch of selected devices needs one or more --device"),
    ("device_names", r"devices are given only with --target selected"),
    ("target", r"a dynamic batch targets all matching devices"),
    ("scheduled_at", r"only a static batch can be scheduled"),
    ("stop_at", r"is required with stop_min, stop_on or stop_action"),
    ("rollback_firmware", r"requires stop_at: the rollback follows the stop rule"),
    ("ramp_base", r"is required with ramp_factor or ramp_every"),
    ("rate_per_minute", r"is required with ramp_base: the ramp rises up to it"),
    ("ramp_base", r"must not exceed rate \(\d+ devices per minute\)"),
    ("window_minutes", r"window and window_minutes are given together"),
    ("window_tz", r"is given only with window"),
    ("phases", r"are required with promote_at or promote"),
    ("phases", r"need a static batch: .+"),
    ("promote_at", r"a phased rollout needs promote_at or promote manual"),
    ("promote_at", r"is not taken with promote manual"),
    # Text the schema cannot judge: a cron expression, a time zone, phases that increase.
    ("window", r"must be a cron expression of 5 fields: .+"),
    ("window", r"is not a valid cron expression .+"),
    ("window_tz", r"must be an IANA time zone, e.g. .+"),
    ("phases", r"must increase: .+"),
    ("phases", r"'.*' must be a whole number between 1 and 100"),
    ("scheduled_at", r"must be an ISO 8601 time, e.g. .+"),
    ("scheduled_at", r"must include a time zone, e.g. .+"),
    ("scheduled_at", r"must be between 5 minutes and 7 days from now"),
]
# The batch lists page from a batch's place (created_at, id): their cursor must name one.
BATCH_LISTS = ("GET /api/v1/batches", "GET /api/v1/firmware/{firmware_id}/batches")

ACCEPTED = [
    *(
        Accepted(BATCHES, "RejectedPositiveData", 422, field, detail, "batch option rules")
        for field, detail in BATCH_RULES
    ),
    *(
        Accepted(op, "RejectedPositiveData", 422, field, detail, "full/diff rules between fields")
        for op in FIRMWARE
        for field, detail in CROSS_FIELD
    ),
    *(
        Accepted(
            op,
            "RejectedPositiveData",
            422,
            "file",
            r"name must be 1 to \d+ printable characters",
            "printable is str.isprintable(): the schema's class of what it refuses covers the "
            "BMP; an unassigned code point beyond it (which ones depends on the Unicode version) "
            "is refused by the server only",
        )
        for op in FIRMWARE
    ),
    *(
        Accepted(
            op,
            "RejectedPositiveData",
            422,
            "before_id",
            r"give after_id or before_id, not both",
            "a page is read forward from after_id or back from before_id: a rule between "
            "fields, which JSON Schema cannot state",
        )
        for op in (
            "GET /api/v1/products/{product_key}/devices",
            "GET /api/v1/batches/{batch_id}/tasks",
            *BATCH_LISTS,
            "GET /api/v1/firmware",
        )
    ),
    *(
        Accepted(
            op,
            "RejectedPositiveData",
            422,
            field,
            r"no batch .+: give a page's next_after_id or prev_before_id .+",
            "a batch list's cursor is a batch that exists (the page starts at its place in the "
            "list, newest first): state, not shape",
        )
        for op in BATCH_LISTS
        for field in ("after_id", "before_id")
    ),
    Accepted(
        "POST /api/v1/firmware/{firmware_id}/verifications",
        "RejectedPositiveData",
        422,
        "device_names",
        r".+ is not a device of .+",
        "the devices must be registered in the firmware's product (the run deletes the seeded "
        "one): state, not shape",
    ),
    Accepted(
        "POST /api/v1/firmware",
        "RejectedPositiveData",
        422,
        "ext_data",
        r"must be at most \d+ bytes as JSON",
        "ext_data's size is its JSON's, which JSON Schema cannot state of an object",
    ),
    Accepted(
        "POST /api/v1/firmware",
        "RejectedPositiveData",
        422,
        "sign_with",
        r"product .+ has no previous key: .+",
        "sign_with previous needs the product's key rotation under way: state, not shape",
    ),
    Accepted(
        "POST /api/v1/firmware/diff",
        "RejectedPositiveData",
        422,
        "to_id",
        r"must be another firmware than the one the diff is made from",
        "from_id and to_id must differ: a rule between fields, which JSON Schema cannot state "
        "(the seeded firmware 1 is the only id that is not a 404)",
    ),
    Accepted(
        "POST /api/v1/products/{product_key}/devices/import",
        "RejectedPositiveData",
        422,
        "file",
        r"line \d+: .+",
        "each CSV line is name[,version[,module]]: a pattern for that breaks schemathesis' "
        "generator, so the schema says a string of 4 characters or more",
    ),
    Accepted(
        "POST /api/v1/products/{product_key}/devices/import",
        "AcceptedNegativeData",
        201,
        None,
        "",
        "a text body has no types: the 'incorrect type' bodies (null, false...) go out as their "
        "text, which is a valid CSV of one device named null or false",
        typed_body=True,
    ),
]


def accepted(failure: Any, case: Any, response: Any) -> Accepted | None:
    return next((a for a in ACCEPTED if a.matches(failure, case, response)), None)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    return accepted(failure, case, response) is None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    # Add Firmware checks the metadata before it reads the file, so the file must be the form's
    # last part (the schema says so; OpenAPI has no keyword for part order). Parts go out in the
    # body dict's order: put the file last, as the console and curl -F do. (map_body is only
    # applied to the fuzzing phase's cases; before_call sees every request.)
    body = case.body
    if isinstance(body, dict) and "file" in body and list(body)[-1] != "file":
        body["file"] = body.pop("file")
