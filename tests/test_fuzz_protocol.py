"""Property tests of the device-message parser: whatever a device publishes on whatever topic,
`protocol.parse` returns a valid message or a counted rejection naming what was wrong; it never
raises, and never accepts a field of the wrong type. Profile and local runs: tests/fuzz_traffic.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ota import protocol
from ota.domain import DEFAULT_MODULE, MODULE_RE, PROGRESS_FAILURES, VERSION_RE
from tests.fuzz_traffic import (
    FUZZ,
    JSON_KINDS,
    KNOWN_FIELDS,
    KNOWN_PARAMS,
    ODD_NAMES,
    TOPIC_OF,
    UNKNOWN_FIELDS,
    any_text,
    encode,
    json_values,
    nested,
    not_json_object_payloads,
    one_field_wrong,
    truncated,
    valid_bodies,
)

PK, DN = "a1B2c3", "dev-1"
NOT_JSON = "payload is not JSON"
# The reasons a well-formed topic's message may be refused for, before its fields are read.
PAYLOAD_REASONS = (NOT_JSON, "payload is not a JSON object", "payload too large")


def parse_counted(topic: str, payload: bytes) -> protocol.Message | protocol.Rejected:
    """parse, checking that exactly the rejections are counted and none is the parser's bug."""
    before = sum(protocol.REJECTED.values())
    msg = protocol.parse(topic, payload)
    counted = sum(protocol.REJECTED.values()) - before
    if isinstance(msg, protocol.Rejected):
        assert counted == 1, msg
        assert not msg.reason.startswith("internal"), msg  # the parser's own bug, not the input's
    else:
        assert counted == 0, msg
        assert_valid(msg)
    return msg


def assert_valid(msg: protocol.Message) -> None:
    """What the bridge may rely on in any accepted message."""
    assert msg.product_key and msg.device_name and "/" not in msg.product_key + msg.device_name
    if isinstance(msg, protocol.Status):
        return
    assert isinstance(msg.msg_id, str) and MODULE_RE.fullmatch(msg.module), msg
    if isinstance(msg, protocol.Inform):
        assert VERSION_RE.fullmatch(msg.version), msg
    if isinstance(msg, protocol.Progress):
        assert msg.step in PROGRESS_FAILURES or 0 <= msg.step <= 100, msg
        assert isinstance(msg.desc, str)


def expected(kind: str, body: dict[str, Any]) -> protocol.Message:
    params = body.get("params", {})
    msg_id, module = str(body.get("id", "")), params.get("module") or DEFAULT_MODULE
    if kind == protocol.INFORM:
        return protocol.Inform(PK, DN, msg_id, params["version"], module)
    if kind == protocol.PROGRESS:
        desc = params.get("desc", "")
        step = int(str(params["step"]).strip())
        return protocol.Progress(
            PK, DN, msg_id, step, desc if isinstance(desc, str) else "", module
        )
    return protocol.FirmwareGet(PK, DN, msg_id, module)


def is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(st.sampled_from(JSON_KINDS).flatmap(lambda k: st.tuples(st.just(k), valid_bodies(k))))
@example((protocol.INFORM, {"id": 1, "params": {"version": "1.0.0", "region": "cn"}, "x": None}))
def test_a_valid_message_with_unknown_fields_is_accepted(kind_body):
    """Alibaba's devices add fields of their own; they must not cost the report."""
    kind, body = kind_body
    assert parse_counted(TOPIC_OF[kind](PK, DN), encode(body)) == expected(kind, body)


@FUZZ
@given(st.sampled_from(JSON_KINDS).flatmap(lambda k: st.tuples(st.just(k), valid_bodies(k))))
@example((protocol.FIRMWARE_GET, {"id": "\ud800"}))  # json.loads(bytes) took it ('surrogatepass')
@example((protocol.INFORM, {"params": {"version": "1.0.0"}, "name": "温度计 ☃"}))
def test_raw_utf8_is_accepted_and_invalid_utf8_rejected(kind_body):
    """Unescaped non-ASCII is fine; a lone surrogate written raw is not UTF-8."""
    kind, body = kind_body
    payload = encode(body, ascii_only=False)
    msg = parse_counted(TOPIC_OF[kind](PK, DN), payload)
    if is_utf8(payload):
        assert msg == expected(kind, body)
    else:
        assert isinstance(msg, protocol.Rejected) and msg.reason.startswith(NOT_JSON), msg


# --- one field wrong ----------------------------------------------------------------------------


@FUZZ
@given(one_field_wrong())
@example((protocol.INFORM, "params.module", {"params": {"version": "2.0.0", "module": False}}))
@example((protocol.INFORM, "params.module", {"params": {"version": "2.0.0", "module": 0}}))
@example((protocol.PROGRESS, "params.step", {"params": {"step": "\u0665"}}))
@example((protocol.PROGRESS, "params.step", {"params": {"step": "4_5"}}))
def test_a_field_of_the_wrong_type_or_value_is_rejected_naming_it(case):
    """A wrong-typed module once counted as the default module: `"module": false` beside the
    target version moved a task to updated."""
    kind, field, body = case
    msg = parse_counted(TOPIC_OF[kind](PK, DN), encode(body))
    reason = "params must be an object" if field == "params" else field
    assert isinstance(msg, protocol.Rejected) and msg.reason.startswith(reason), (msg, body)


# --- not a message at all -----------------------------------------------------------------------


@FUZZ
@given(
    st.sampled_from(JSON_KINDS).flatmap(lambda k: st.tuples(st.just(k), valid_bodies(k))), st.data()
)
def test_a_truncated_payload_is_rejected(kind_body, data):
    kind, body = kind_body
    cut = data.draw(truncated(encode(body)))
    msg = parse_counted(TOPIC_OF[kind](PK, DN), cut)
    assert isinstance(msg, protocol.Rejected) and msg.reason.startswith(NOT_JSON), msg


@FUZZ
@given(st.sampled_from(JSON_KINDS), not_json_object_payloads())
@example(protocol.INFORM, ("[" * 10_000 + "]" * 10_000).encode())
@example(protocol.FIRMWARE_GET, b'{"id":"\xed\xa0\x80"}')  # a lone surrogate, raw
@example(protocol.FIRMWARE_GET, b"\xef\xbb\xbf{}")  # a UTF-8 byte order mark: not JSON (RFC 8259)
@example(protocol.INFORM, '{"params":{"version":"2.0.0"}}'.encode("utf-16"))
def test_what_is_not_a_utf8_json_object_is_rejected(kind, payload):
    msg = parse_counted(TOPIC_OF[kind](PK, DN), payload)
    assert isinstance(msg, protocol.Rejected) and msg.reason.startswith(PAYLOAD_REASONS), msg


@FUZZ
@given(
    st.sampled_from(JSON_KINDS),
    st.integers(1, 30_000),
    st.sampled_from(["payload", "unknown field", "id", "params"]),
)
@example(protocol.INFORM, 10_000, "unknown field")
@example(protocol.PROGRESS, 10_000, "params")
def test_deep_json_is_rejected_or_accepted_never_a_recursion_error(kind, depth, where):
    """json.loads raises RecursionError past ~1,000 levels; 10,000 fit in a 64 KB payload."""
    valid = json.dumps(expected_body(kind))
    deep = nested(depth)
    payload = {
        "payload": deep,
        "unknown field": valid[:-1] + f',"x":{deep}}}',
        "id": valid[:-1] + f',"id":{deep}}}',
        "params": valid.replace('"params": {', f'"params": {{"x":{deep},', 1),
    }[where].encode()
    msg = parse_counted(TOPIC_OF[kind](PK, DN), payload)
    if isinstance(msg, protocol.Rejected):
        assert msg.reason.startswith(PAYLOAD_REASONS + ("id",)), msg
    if len(payload) > protocol.MAX_PAYLOAD_BYTES:
        assert msg == protocol.Rejected(TOPIC_OF[kind](PK, DN), "payload too large")
    elif where in ("unknown field", "params") and depth <= 100:
        assert not isinstance(msg, protocol.Rejected), msg


def expected_body(kind: str) -> dict[str, Any]:
    params = {protocol.INFORM: {"version": "2.0.0"}, protocol.PROGRESS: {"step": "5"}}
    return {"id": "1", "params": params.get(kind, {"module": "mcu"})}


@FUZZ
@given(st.binary(max_size=64) | any_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(b" ONLINE\n")
@example(b"")
def test_status_is_online_or_offline_or_rejected(payload):
    msg = parse_counted(protocol.status_topic(PK, DN), payload)
    word = payload.decode("utf-8", "replace").strip().lower()
    if word in ("online", "offline"):
        assert msg == protocol.Status(PK, DN, word == "online")
    else:
        assert msg == protocol.Rejected(
            protocol.status_topic(PK, DN), "status must be online or offline"
        )


# --- odd topics ---------------------------------------------------------------------------------

TOPIC_RE = re.compile(r"/ota/device/(inform|progress|status)/([^/]+)/([^/]+)")
GET_RE = re.compile(r"/sys/([^/]+)/([^/]+)/thing/ota/firmware/get")


@st.composite
def odd_topics(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(list(TOPIC_OF)))
    topic = TOPIC_OF[kind](draw(ODD_NAMES), draw(ODD_NAMES))
    change = draw(st.sampled_from(["none", "extra level", "trailing /", "no leading /", "case"]))
    topic = {
        "none": topic,
        "extra level": topic + "/" + draw(ODD_NAMES),
        "trailing /": topic + "/",
        "no leading /": topic[1:],
        "case": topic.upper(),
    }[change]
    return kind, topic


@FUZZ
@given(odd_topics())
@example((protocol.INFORM, "/ota/device/inform//dev"))
@example((protocol.FIRMWARE_GET, "/sys/pk/+/thing/ota/firmware/get"))
@example((protocol.INFORM, "/ota/device/upgrade/pk/dn"))  # the platform's own topic
def test_an_odd_topic_names_its_device_exactly_or_is_rejected(kind_topic):
    kind, topic = kind_topic
    payload = b"online" if kind == protocol.BIRTH else encode(expected_body(kind))
    msg = parse_counted(topic, payload)
    match = TOPIC_RE.fullmatch(topic) or GET_RE.fullmatch(topic)
    if match is None:
        assert msg == protocol.Rejected(topic, "unknown topic")
    else:
        pk, dn = match.groups()[-2:]
        assert (msg.product_key, msg.device_name) == (pk, dn), msg


@FUZZ
@given(
    st.one_of(odd_topics().map(lambda kt: kt[1]), st.text(max_size=60)),
    st.one_of(
        not_json_object_payloads(),
        st.sampled_from(JSON_KINDS).flatmap(valid_bodies).map(encode),
        json_values.map(encode),
        st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)), json_values).map(encode),
        st.dictionaries(st.sampled_from(sorted(KNOWN_PARAMS)), json_values)
        .map(lambda p: {"params": p})
        .map(encode),
    ),
)
def test_anything_on_any_topic_is_a_valid_message_or_a_counted_rejection(topic, payload):
    parse_counted(topic, payload)


# --- what a device receives (our SDK parses pushes and firmware/get replies) -------------------

UPGRADE_DATA = {
    "size": 432945,
    "version": "2.0.0",
    "url": "http://h/download/1?sig=x",
    "sign": "93230c3bde425a9d7984a594ac55ea1e",
    "signMethod": "Md5",
}


@st.composite
def upgrade_payloads(draw: st.DrawFn) -> bytes:
    """A push with fields changed, added or dropped at random, or no push at all."""
    data: dict[str, Any] = dict(UPGRADE_DATA)
    for key in draw(st.lists(st.sampled_from([*UPGRADE_DATA, "module", "digestsign", "isDiff"]))):
        data[key] = draw(json_values | st.sampled_from(["SHA256", "Md5", "zz" * 16, "ab" * 32]))
    body = {"code": "1000", "id": draw(json_values), "data": data} | draw(UNKNOWN_FIELDS)
    return draw(st.sampled_from([encode(body), encode(body, ascii_only=False)]))


@FUZZ
@given(upgrade_payloads() | not_json_object_payloads() | json_values.map(encode))
@example(('{"data":' + nested(10_000) + "}").encode())
@example(encode({"data": UPGRADE_DATA | {"sign": "z" * 32}}))
@example(encode({"data": UPGRADE_DATA | {"signMethod": ["Md5"]}}))  # was an internal TypeError
def test_a_push_is_valid_nothing_or_a_counted_rejection(payload):
    before = sum(protocol.REJECTED.values())
    upgrade = protocol.parse_upgrade(payload)
    counted = sum(protocol.REJECTED.values()) - before
    assert counted == isinstance(upgrade, protocol.Rejected)
    if isinstance(upgrade, protocol.Rejected):
        assert not upgrade.reason.startswith("internal"), upgrade
    elif upgrade is not None:
        assert upgrade.size > 0 and upgrade.version and upgrade.url, upgrade
        assert re.fullmatch(
            f"[0-9a-f]{{{protocol.SIGN_LENGTHS[upgrade.sign_method]}}}", upgrade.sign
        )


def test_rejections_are_all_counted_and_logged_once_a_minute_per_reason(caplog, monkeypatch):
    """The bridge fuzz's 10,000 messages wrote 8,000 warnings: a device looping on garbage
    would fill the log. Every rejection still counts."""
    monkeypatch.setattr(protocol, "_rejected_logged_at", {})
    monkeypatch.setattr(protocol, "_rejected_unlogged", Counter())
    before = protocol.REJECTED["payload is not JSON"]
    with caplog.at_level(logging.WARNING, logger="ota.protocol"):
        for i in range(1000):
            protocol.parse(protocol.inform_topic(PK, f"dev\n{i}"), b"{garbage")
        protocol.parse(protocol.inform_topic(PK, DN), b"[]")  # another reason: logged
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "rejected message on '/ota/device/inform/a1B2c3/dev\\n0': payload is not JSON",
            f"rejected message on '{protocol.inform_topic(PK, DN)}': payload is not a JSON object",
        ]
        monkeypatch.setattr(protocol, "REJECTED_LOG_SECONDS", 0)  # a minute later
        protocol.parse(protocol.inform_topic(PK, DN), b"{garbage")
    assert protocol.REJECTED["payload is not JSON"] == before + 1001
    assert caplog.records[-1].getMessage().endswith("payload is not JSON (and 999 more since)")
