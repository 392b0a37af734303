"""Hypothesis strategies for device traffic (issue 17's fuzzing), shared by the parser's property
tests and the bridge's end-to-end fuzz, and the fixed profile that keeps CI time predictable.

CI runs derandomized (the same examples every run) with a bounded number of examples. A longer,
random fuzz locally:

    OTA_FUZZ_EXAMPLES=20000 OTA_FUZZ_RANDOM=1 pytest tests/test_fuzz_protocol.py
    OTA_FUZZ_MESSAGES=20000 OTA_FUZZ_SEED=$RANDOM pytest tests/test_fuzz_bridge.py -s

A failure prints the example (and with OTA_FUZZ_RANDOM a `@reproduce_failure` blob to replay it).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ota import protocol
from ota.domain import MODULE_RE, PROGRESS_FAILURES, VERSION_RE

EXAMPLES = int(os.environ.get("OTA_FUZZ_EXAMPLES", "100"))
RANDOM = os.environ.get("OTA_FUZZ_RANDOM", "") not in ("", "0")

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    database=None,  # nothing remembered between runs: CI sees the same examples every time
    deadline=None,  # a 10,000-level payload takes a while; time is bounded by max_examples
    print_blob=RANDOM,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KINDS = list(protocol.DEVICE_TOPIC_FILTERS)
TOPIC_OF = {
    protocol.INFORM: protocol.inform_topic,
    protocol.PROGRESS: protocol.progress_topic,
    protocol.FIRMWARE_GET: protocol.firmware_get_topic,
    protocol.BIRTH: protocol.status_topic,
}
KNOWN_FIELDS = {"id", "params", "version", "method"}
KNOWN_PARAMS = {"version", "module", "step", "desc"}

# --- values -------------------------------------------------------------------------------------

# Every code point, and lone surrogates more often than chance (json.dumps writes them \ud800).
any_char = st.characters(codec=None, categories=None) | st.characters(categories=["Cs"])
any_text = st.text(any_char, max_size=40)
huge_ints = st.sampled_from(
    [10**40, -(10**40), -(2**63) - 1, 2**63, 2**64, -(2**31) - 1, 2**53 + 1, 10**4000]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity become JSON literals
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=8,
)


def unknown_fields(known: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    """What Alibaba's devices and later SDKs add: fields we do not read."""
    keys = any_text.filter(lambda k: k not in known)
    return st.dictionaries(keys, json_values, max_size=3)


def nested(depth: int, leaf: Any = 0) -> str:
    """`depth` levels of arrays and objects, as JSON text (json.dumps itself would recurse)."""
    opening = "".join('{"a":' if i % 2 else "[" for i in range(depth))
    closing = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opening + json.dumps(leaf) + closing


# --- what a well-behaved device sends -----------------------------------------------------------

versions = st.from_regex(VERSION_RE, fullmatch=True)
modules = st.from_regex(MODULE_RE, fullmatch=True)
msg_ids = st.one_of(any_text, st.integers(), huge_ints)
# The SDKs send "45"; some send 45; ASCII blanks around the digits are tolerated.
valid_steps = st.integers(-4, 100).flatmap(
    lambda n: st.sampled_from([n, str(n), f" {n}", f"{n}\n", f"0{n}" if n >= 0 else str(n)])
)


# Built once: a strategy made inside a draw is validated again at every draw (3x slower).
UNKNOWN_FIELDS = unknown_fields(KNOWN_FIELDS)
UNKNOWN_PARAMS = unknown_fields(KNOWN_PARAMS)
DESCS = st.one_of(any_text, json_values)


@st.composite
def valid_bodies(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A JSON object the parser must accept for `kind` (inform, progress, firmware_get)."""
    body: dict[str, Any] = draw(UNKNOWN_FIELDS)
    params: dict[str, Any] = draw(UNKNOWN_PARAMS)
    if draw(st.booleans()):
        body["id"] = draw(msg_ids)
    module = draw(st.sampled_from(["absent", "null", "empty", "named"]))
    if module == "named":
        params["module"] = draw(modules)
    elif module != "absent":  # null and "" mean the default module, as when absent
        params["module"] = None if module == "null" else ""
    if kind == protocol.INFORM:
        params["version"] = draw(versions)
    elif kind == protocol.PROGRESS:
        params["step"] = draw(valid_steps)
        if draw(st.booleans()):
            params["desc"] = draw(DESCS)
    if kind != protocol.FIRMWARE_GET or params or draw(st.booleans()):
        body["params"] = params
    return body


def encode(body: Any, ascii_only: bool = True) -> bytes:
    """JSON as a device would send it; without ascii_only a lone surrogate becomes invalid UTF-8."""
    text = json.dumps(body, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


# --- what a broken or hostile device sends ------------------------------------------------------

JSON_KINDS = [protocol.INFORM, protocol.PROGRESS, protocol.FIRMWARE_GET]
STEP_TEXT = re.compile(r"\s*-?[0-9]{1,8}\s*", re.ASCII)
not_str_or_int = json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, str | int))
not_a_dict = json_values.filter(lambda v: not isinstance(v, dict))
not_a_str = json_values.filter(lambda v: v is not None and not isinstance(v, str))
ABSENT = object()


def step_is_valid(step: object) -> bool:
    if isinstance(step, bool):
        return False
    if isinstance(step, str) and STEP_TEXT.fullmatch(step):
        step = int(step)
    return isinstance(step, int) and (step in PROGRESS_FAILURES or 0 <= step <= 100)


WRONG = {
    "id": not_str_or_int,
    "params": not_a_dict,
    "params.module": not_a_str
    | any_text.filter(lambda m: m != "" and not MODULE_RE.fullmatch(m))
    | st.sampled_from([False, 0, [], {}, "M" * 65, "../x", "mcu\n"]),
    "params.version": st.just(ABSENT)
    | json_values.filter(lambda v: not isinstance(v, str) or not VERSION_RE.fullmatch(v))
    | st.sampled_from(["", "1.0\u00b2", "1.0 beta", "v" * 65, "\ud800"]),
    "params.step": st.just(ABSENT)
    | json_values.filter(lambda v: not step_is_valid(v))
    | st.sampled_from(["\u0665", "4_5", "+7", "1e2", "4.0", "101", "-5", "1" * 5000, 10**40]),
}
FIELDS = {
    protocol.INFORM: ["id", "params", "params.module", "params.version"],
    protocol.PROGRESS: ["id", "params", "params.module", "params.step"],
    protocol.FIRMWARE_GET: ["id", "params", "params.module"],
}


@st.composite
def one_field_wrong(draw: st.DrawFn, kind: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """A valid body for `kind` (any JSON kind if None) with one field wrong: (kind, field, body)."""
    kind = kind or draw(st.sampled_from(JSON_KINDS))
    body = draw(valid_bodies(kind))
    field = draw(st.sampled_from(FIELDS[kind]))
    value = draw(WRONG[field])
    where, _, name = field.rpartition(".")
    target = body.setdefault("params", {}) if where else body
    if value is ABSENT:
        target.pop(name or field, None)
    else:
        target[name or field] = value
    return kind, field, body


def not_json_object_payloads(oversized: bool = True) -> st.SearchStrategy[bytes]:
    """Payloads that are not a UTF-8 JSON object: never a message on a JSON topic."""
    too_large = [st.just(b"{" + b" " * protocol.MAX_PAYLOAD_BYTES + b"}")] if oversized else []
    return st.one_of(
        st.binary(max_size=200).filter(lambda b: not is_json_object(b)),
        st.just(b""),
        json_values.filter(lambda v: not isinstance(v, dict)).map(encode),
        st.sampled_from([b"\xff\xfe{}", b"\xc3\x28", b'{"id":"\xed\xa0\x80"}', b"\x00", b"{\x00}"]),
        st.just(("[" * 10_000 + "]" * 10_000).encode()),
        st.integers(1_000, 30_000).map(lambda d: nested(d).encode()),
        *too_large,
    )


def is_json_object(payload: bytes) -> bool:
    try:
        return isinstance(json.loads(payload.decode("utf-8")), dict)
    except (ValueError, RecursionError):
        return False


def truncated(payload: bytes) -> st.SearchStrategy[bytes]:
    """A strict prefix of a JSON object's text: what a cut-off publish looks like."""
    return st.integers(0, len(payload) - 1).map(lambda n: payload[:n])


ODD_NAMES = st.one_of(
    st.sampled_from(["", "+", "#", "/", "a/b", "dev+1", "dev#", "é☃😀", "\u200b", " ", "x" * 5000]),
    st.text(any_char, min_size=1, max_size=20),
)


def malformed(kind: str) -> st.SearchStrategy[bytes]:
    """A payload the parser must refuse on `kind`'s topic, whatever the device; small enough for
    the bridge's 64 KB packet limit."""
    if kind == protocol.BIRTH:
        return st.binary(max_size=64).filter(
            lambda b: b.decode("utf-8", "replace").strip().lower() not in ("online", "offline")
        )
    return st.one_of(
        not_json_object_payloads(oversized=False),
        one_field_wrong(kind).map(lambda case: encode(case[2])),
        valid_bodies(kind).map(encode).flatmap(truncated),
    )


def near_misses(target: str) -> list[tuple[str, bytes]]:
    """Reports one detail away from moving a task (to updated, in_upgrade or failed); each was
    accepted by the parser before the fuzzing found it."""
    inform = {"id": "1", "params": {"version": target}}
    return [
        (protocol.INFORM, encode({"id": "1", "params": {"version": target, "module": False}})),
        (protocol.INFORM, encode({"id": "1", "params": {"version": target, "module": 0}})),
        (protocol.INFORM, json.dumps(inform).encode("utf-16")),
        (protocol.INFORM, encode(inform | {"x": "\ud800"}, ascii_only=False)),
        (protocol.INFORM, (json.dumps(inform)[:-1] + f',"x":{nested(10_000)}}}').encode()),
        (protocol.PROGRESS, encode({"params": {"step": "-1", "module": []}})),
        (protocol.PROGRESS, encode({"params": {"step": "\u0665"}})),
        (protocol.PROGRESS, encode({"params": {"step": "1_0"}})),
    ]


def broker_accepts(name: str) -> bool:
    """Mosquitto disconnects a client that publishes a topic with a control character, a
    noncharacter (U+FFFE...) or a wildcard; '/' would add a level."""
    for c in name:
        cp = ord(c)
        if c in "+#/" or cp < 0x20 or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF:
            return False
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return False
    return bool(name)


broker_safe_names = ODD_NAMES.filter(broker_accepts)
