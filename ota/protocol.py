"""Alibaba Cloud IoT Platform's device OTA protocol: topics and payloads (see shared PROTOCOL.md).

Parsing never raises to the caller: malformed input comes back as `Rejected` with a reason, and is
counted in `REJECTED`, so no device can stop a service by sending garbage.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ota.domain import DEFAULT_MODULE, parse_progress_step, validate_module, validate_version
from ota.errors import InvalidInput

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024  # a report is a few hundred bytes; anything this big is garbage

INFORM = "inform"
PROGRESS = "progress"
FIRMWARE_GET = "firmware_get"
BIRTH = "birth"  # our SDK's online/offline (retained birth, last will); not part of Alibaba's

# Topics a platform listens on, as MQTT subscription filters.
DEVICE_TOPIC_FILTERS = {
    INFORM: "/ota/device/inform/+/+",
    PROGRESS: "/ota/device/progress/+/+",
    FIRMWARE_GET: "/sys/+/+/thing/ota/firmware/get",
    BIRTH: "/ota/device/status/+/+",
}

REJECTED: Counter[str] = Counter()  # reason -> count, for metrics and tests
REJECTED_LOG_SECONDS = 60.0
_rejected_logged_at: dict[str, float] = {}  # reason -> when last logged
_rejected_unlogged: Counter[str] = Counter()  # reason -> rejections since, not logged


def inform_topic(pk: str, dn: str) -> str:
    return f"/ota/device/inform/{pk}/{dn}"


def upgrade_topic(pk: str, dn: str) -> str:
    return f"/ota/device/upgrade/{pk}/{dn}"


def progress_topic(pk: str, dn: str) -> str:
    return f"/ota/device/progress/{pk}/{dn}"


def firmware_get_topic(pk: str, dn: str) -> str:
    return f"/sys/{pk}/{dn}/thing/ota/firmware/get"


def firmware_get_reply_topic(pk: str, dn: str) -> str:
    return f"/sys/{pk}/{dn}/thing/ota/firmware/get_reply"


def status_topic(pk: str, dn: str) -> str:
    """Our SDK publishes "online" here (retained) on connect and sets "offline" as its last will."""
    return f"/ota/device/status/{pk}/{dn}"


# Every topic by direction, as MQTT filters: what a broker tier's leaves forward to the hub (up)
# and from it (down), and what the account of a leaf's bridge may do (ota/broker_tier.py).
DEVICE_TO_PLATFORM = tuple(DEVICE_TOPIC_FILTERS.values())
PLATFORM_TO_DEVICE = (upgrade_topic("+", "+"), firmware_get_reply_topic("+", "+"))


@dataclass(frozen=True)
class Inform:
    product_key: str
    device_name: str
    msg_id: str
    version: str
    module: str = DEFAULT_MODULE


@dataclass(frozen=True)
class Progress:
    product_key: str
    device_name: str
    msg_id: str
    step: int  # 1..100 percent, or -1..-4 failure codes
    desc: str = ""
    module: str = DEFAULT_MODULE


@dataclass(frozen=True)
class FirmwareGet:
    product_key: str
    device_name: str
    msg_id: str
    module: str = DEFAULT_MODULE


@dataclass(frozen=True)
class Status:
    product_key: str
    device_name: str
    online: bool


@dataclass(frozen=True)
class Rejected:
    topic: str
    reason: str


Message = Inform | Progress | FirmwareGet | Status


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """(kind, product key, device name) for a device topic we listen on, else None."""
    parts = topic.split("/")
    if len(parts) == 6 and parts[0] == "" and parts[1:3] == ["ota", "device"]:
        kind = {"inform": INFORM, "progress": PROGRESS, "status": BIRTH}.get(parts[3])
        if kind and parts[4] and parts[5]:
            return kind, parts[4], parts[5]
    if (
        len(parts) == 8
        and parts[:2] == ["", "sys"]
        and parts[4:] == ["thing", "ota", "firmware", "get"]
        and parts[2]
        and parts[3]
    ):
        return FIRMWARE_GET, parts[2], parts[3]
    return None


def parse(topic: str, payload: bytes) -> Message | Rejected:
    """Decode one message from a device; never raises."""
    try:
        return _parse(topic, payload)
    except Exception as exc:  # a bug here must not stop the bridge either
        log.exception("unexpected error parsing %s", topic)
        return _reject(topic, f"internal: {exc.__class__.__name__}")


def _parse(topic: str, payload: bytes) -> Message | Rejected:
    where = parse_topic(topic)
    if where is None:
        return _reject(topic, "unknown topic")
    kind, pk, dn = where
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _reject(topic, "payload too large")
    if kind == BIRTH:
        text = payload.decode("utf-8", "replace").strip().lower()
        if text not in ("online", "offline"):
            return _reject(topic, "status must be online or offline")
        return Status(pk, dn, text == "online")
    body = _json_object(payload)
    if isinstance(body, str):
        return _reject(topic, body)
    msg_id = body.get("id", "")
    if isinstance(msg_id, bool) or not isinstance(msg_id, (str, int)):
        return _reject(topic, "id must be a string or a number")
    msg_id = str(msg_id)
    params = body.get("params", {})
    if not isinstance(params, dict):
        return _reject(topic, "params must be an object")
    # Absent, null or "" is the default module. Anything else must be a string: `false` or `0`
    # taken for the default module would let a malformed report move a task.
    module = params.get("module")
    if module is None or module == "":
        module = DEFAULT_MODULE
    if not isinstance(module, str):
        return _reject(topic, "params.module must be a string")
    # The API's own rules: what a device reports is stored and shown beside what operators
    # typed, and a value the database refuses (too long) would fail the bridge's whole flush.
    try:
        validate_module(module)
    except InvalidInput as exc:
        return _reject(topic, f"params.module {exc.message}")
    if kind == INFORM:
        version = params.get("version")
        if not isinstance(version, str):
            return _reject(topic, "params.version must be a string")
        try:
            validate_version(version)
        except InvalidInput as exc:
            return _reject(topic, f"params.version {exc.message}")
        return Inform(pk, dn, msg_id, version, module)
    if kind == PROGRESS:
        step = parse_progress_step(params.get("step"))
        if step is None:
            return _reject(topic, "params.step must be 0..100 or -1..-4")
        desc = params.get("desc", "")
        return Progress(pk, dn, msg_id, step, desc if isinstance(desc, str) else "", module)
    return FirmwareGet(pk, dn, msg_id, module)


def _json_object(payload: bytes) -> dict[str, Any] | str:
    """The payload's JSON object, or why it is none. UTF-8 only, as the SDKs write it (RFC 8259):
    json.loads would also take UTF-16, and lone surrogates encoded as bytes ('surrogatepass')."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "payload is not JSON: not UTF-8"
    try:
        body = json.loads(text)
    except ValueError:
        return "payload is not JSON"
    except RecursionError:  # ~1,000 levels of [ or {: 10,000 fit in a payload
        return "payload is not JSON: nested too deeply"
    if not isinstance(body, dict):
        return "payload is not a JSON object"
    return body


def _reject(topic: str, reason: str) -> Rejected:
    REJECTED[reason] += 1
    # One line per reason per REJECTED_LOG_SECONDS: a device publishing garbage in a loop would
    # otherwise write a line per message (8,000 for the bridge fuzz's 10,000 messages).
    now = time.monotonic()
    if now - _rejected_logged_at.get(reason, -math.inf) < REJECTED_LOG_SECONDS:
        _rejected_unlogged[reason] += 1
        return Rejected(topic, reason)
    _rejected_logged_at[reason] = now
    more = _rejected_unlogged.pop(reason, 0)
    # %r: a device chooses its topic; a name with a line break must not forge log lines.
    log.warning(
        "rejected message on %r: %s%s", topic, reason, f" (and {more} more since)" if more else ""
    )
    return Rejected(topic, reason)


# --- what the platform sends --------------------------------------------------------------------


def encode_upgrade(data: dict[str, Any], msg_id: int) -> bytes:
    """An upgrade push; `data` comes from ota.push.upgrade_data."""
    return json.dumps(
        {"code": "1000", "message": "success", "id": msg_id, "data": data},
        separators=(",", ":"),
    ).encode()


def encode_firmware_get_reply(msg_id: str, data: dict[str, Any] | None) -> bytes:
    """The reply to firmware/get: the pending push's data, or {} when nothing is pending."""
    return json.dumps(
        {"id": msg_id, "code": 200, "data": data or {}, "message": "success"},
        separators=(",", ":"),
    ).encode()


# --- what a device sends (used by our SDK and the simulator) ------------------------------------


def encode_inform(msg_id: str, version: str, module: str = DEFAULT_MODULE) -> bytes:
    params: dict[str, Any] = {"version": version}
    if module != DEFAULT_MODULE:
        params["module"] = module
    return json.dumps({"id": msg_id, "params": params}).encode()


def encode_progress(msg_id: str, step: int, desc: str = "", module: str = DEFAULT_MODULE) -> bytes:
    params: dict[str, Any] = {"step": str(step), "desc": desc}
    if module != DEFAULT_MODULE:
        params["module"] = module
    return json.dumps({"id": msg_id, "params": params}).encode()


def encode_firmware_get(msg_id: str, module: str = DEFAULT_MODULE) -> bytes:
    params: dict[str, Any] = {}
    if module != DEFAULT_MODULE:
        params["module"] = module
    return json.dumps(
        {"id": msg_id, "version": "1.0", "params": params, "method": "thing.ota.firmware.get"}
    ).encode()


# --- what a device receives (used by our SDK) ---------------------------------------------------

ONLINE = b"online"
OFFLINE = b"offline"


# Our key in a push's extData (its only free-form field, so the wire stays Alibaba's): `true`
# when the platform means to install an older version (a batch whose firmware sorts before the
# task's source version). Devices on our SDK refuse any other push that is not newer.
EXT_DOWNGRADE = "downgrade"


@dataclass(frozen=True)
class Upgrade:
    """An upgrade push or a non-empty firmware/get reply, as a device sees it."""

    msg_id: str
    version: str
    url: str
    size: int
    sign: str  # lowercase hex digest of the whole file
    sign_method: str  # "Md5" or "SHA256", as on the wire
    module: str = DEFAULT_MODULE
    is_diff: bool = False
    digestsign: str | None = None  # secure update: base64 RSA signature (PROTOCOL.md)
    ext_data: dict[str, Any] | None = None

    @property
    def downgrade(self) -> bool:
        """The platform means it: this push may go back to an older version."""
        return self.ext_data is not None and self.ext_data.get(EXT_DOWNGRADE) is True


SIGN_LENGTHS = {"Md5": 32, "SHA256": 64}
HEX_RE = re.compile(r"[0-9a-fA-F]+")


def parse_upgrade(payload: bytes) -> Upgrade | Rejected | None:
    """Decode a push or a firmware/get reply; None for a reply with `{}` data. Never raises."""
    try:
        return _parse_upgrade(payload)
    except Exception as exc:
        log.exception("unexpected error parsing an upgrade")
        return _reject("upgrade", f"internal: {exc.__class__.__name__}")


def _parse_upgrade(payload: bytes) -> Upgrade | Rejected | None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _reject("upgrade", "payload too large")
    body = _json_object(payload)
    if isinstance(body, str):
        return _reject("upgrade", body)
    if not isinstance(body.get("data", {}), dict):
        return _reject("upgrade", "data must be a JSON object")
    data = body.get("data") or {}
    if not data:
        return None
    msg_id = body.get("id", "")
    size = data.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        return _reject("upgrade", "data.size must be a positive number")
    method = data.get("signMethod")
    if not isinstance(method, str) or method not in SIGN_LENGTHS:  # a list is unhashable
        return _reject("upgrade", 'data.signMethod must be "Md5" or "SHA256"')
    sign = data.get("sign")
    if not isinstance(sign, str) or not HEX_RE.fullmatch(sign) or len(sign) != SIGN_LENGTHS[method]:
        return _reject("upgrade", f"data.sign must be {SIGN_LENGTHS[method]} hex characters")
    version, url = data.get("version"), data.get("url")
    if not isinstance(version, str) or not version or not isinstance(url, str) or not url:
        return _reject("upgrade", "data.version and data.url must be non-empty strings")
    module = data.get("module") or DEFAULT_MODULE
    digestsign = data.get("digestsign")
    ext = data.get("extData")
    if not isinstance(module, str) or not isinstance(digestsign, str | None):
        return _reject("upgrade", "data.module and data.digestsign must be strings")
    return Upgrade(
        msg_id=str(msg_id),
        version=version,
        url=url,
        size=size,
        sign=sign.lower(),
        sign_method=method,
        module=module,
        is_diff=bool(data.get("isDiff")),
        digestsign=digestsign,
        ext_data=ext if isinstance(ext, dict) else None,
    )
