"""The device protocol's codecs: every payload shape the SDKs send, and every kind of garbage."""

from __future__ import annotations

import json

import pytest

from ota import protocol
from ota.mqtt import MqttEndpoint, redact
from ota.protocol import FirmwareGet, Inform, Progress, Rejected, Status, Upgrade

PK, DN = "a1B2c3", "dev-1"
INFORM = protocol.inform_topic(PK, DN)
PROGRESS = protocol.progress_topic(PK, DN)
GET = protocol.firmware_get_topic(PK, DN)
STATUS = protocol.status_topic(PK, DN)


def body(**kw: object) -> bytes:
    return json.dumps(kw).encode()


@pytest.mark.parametrize("msg_id", ["123", 123])
def test_inform_id_string_or_number(msg_id):
    msg = protocol.parse(INFORM, body(id=msg_id, params={"version": "1.0.1", "module": "mcu"}))
    assert msg == Inform(PK, DN, "123", "1.0.1", "mcu")


def test_inform_without_module_is_default():
    msg = protocol.parse(INFORM, body(id="1", params={"version": "1.0.1"}))
    assert isinstance(msg, Inform) and msg.module == "default"


def test_linkkit_inform_payload():
    # aliyun-iot-linkkit 1.2.13 writes this by hand: a number id, no module.
    msg = protocol.parse(INFORM, b'{"id": 1, "params": {"version": "1.0.0"}}')
    assert msg == Inform(PK, DN, "1", "1.0.0")


@pytest.mark.parametrize(
    ("step", "value"), [("45", 45), (45, 45), ("100", 100), ("-3", -3), (-4, -4)]
)
def test_progress_step_string_or_number(step, value):
    msg = protocol.parse(PROGRESS, body(id=7, params={"step": step, "desc": "x", "module": "mcu"}))
    assert msg == Progress(PK, DN, "7", value, "x", "mcu")


def test_firmware_get_with_and_without_module():
    assert protocol.parse(GET, protocol.encode_firmware_get("9", "mcu")) == FirmwareGet(
        PK, DN, "9", "mcu"
    )
    assert protocol.parse(GET, b'{"id": 1, "params": {}}') == FirmwareGet(PK, DN, "1")


@pytest.mark.parametrize(("payload", "online"), [(b"online", True), (b"offline", False)])
def test_status(payload, online):
    assert protocol.parse(STATUS, payload) == Status(PK, DN, online)


def test_encoders_round_trip():
    assert protocol.parse(INFORM, protocol.encode_inform("5", "2.0", "mcu")) == Inform(
        PK, DN, "5", "2.0", "mcu"
    )
    assert protocol.parse(PROGRESS, protocol.encode_progress("6", -2)) == Progress(PK, DN, "6", -2)
    # The SDKs expect the step as a string and no module for the default module.
    params = json.loads(protocol.encode_progress("6", 50))["params"]
    assert params["step"] == "50" and "module" not in params


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (INFORM, b"{not json", "payload is not JSON"),
        (INFORM, b"\xff\xfe", "payload is not JSON"),
        (INFORM, b"[1, 2]", "payload is not a JSON object"),
        (INFORM, body(id=True, params={"version": "1"}), "id must be a string or a number"),
        (INFORM, body(id=[1], params={"version": "1"}), "id must be a string or a number"),
        (INFORM, body(id="1", params="x"), "params must be an object"),
        (INFORM, body(id="1", params={"version": 1}), "params.version"),
        (INFORM, body(id="1", params={"version": ""}), "params.version"),
        (INFORM, body(id="1", params={"version": "v" * 65}), "params.version"),
        (INFORM, body(id="1", params={"version": "1", "module": 5}), "params.module"),
        # What the API would refuse: stored, such a version broke sorting (500 in the console),
        # and an over-long module failed a whole flush on PostgreSQL.
        (INFORM, body(id="1", params={"version": "1.0\u00b2"}), "params.version"),
        (INFORM, body(id="1", params={"version": "1.0 beta"}), "params.version"),
        (INFORM, body(id="1", params={"version": "1", "module": "m" * 65}), "params.module"),
        (INFORM, body(id="1", params={"version": "1", "module": "../x"}), "params.module"),
        (PROGRESS, body(id="1", params={"step": "5", "module": "m" * 65}), "params.module"),
        (GET, body(id="1", params={"module": "wifi/2"}), "params.module"),
        (PROGRESS, body(id="1", params={"step": "abc"}), "params.step"),
        (PROGRESS, body(id="1", params={"step": "101"}), "params.step"),
        (PROGRESS, body(id="1", params={"step": "-5"}), "params.step"),
        (PROGRESS, body(id="1", params={"step": True}), "params.step"),
        (PROGRESS, body(id="1", params={"step": 4.5}), "params.step"),
        (STATUS, b"maybe", "status must be online or offline"),
        ("/ota/device/inform/pk", body(id="1"), "unknown topic"),
        ("/ota/device/reboot/pk/dn", body(id="1"), "unknown topic"),
        ("/ota/device/inform//dn", body(id="1"), "unknown topic"),
        ("/sys/pk/dn/thing/ota/firmware/put", body(id="1"), "unknown topic"),
        (INFORM, b"{" + b" " * protocol.MAX_PAYLOAD_BYTES + b"}", "payload too large"),
    ],
)
def test_malformed_is_rejected_and_counted(topic, payload, reason):
    before = sum(protocol.REJECTED.values())
    msg = protocol.parse(topic, payload)
    assert isinstance(msg, Rejected) and msg.reason.startswith(reason)
    assert sum(protocol.REJECTED.values()) == before + 1


def test_unregistered_device_is_not_the_parsers_business():
    assert isinstance(
        protocol.parse(protocol.inform_topic("nope", "nobody"), body(params={"version": "1"})),
        Inform,
    )


def test_parse_never_raises_even_on_its_own_bugs(monkeypatch):
    def boom(*_a):
        raise KeyError("bug")

    monkeypatch.setattr(protocol, "_parse", boom)
    assert protocol.parse(INFORM, b"{}") == Rejected(INFORM, "internal: KeyError")


# --- what devices receive --------------------------------------------------------------------

DATA = {
    "size": 432945,
    "version": "2.0.0",
    "url": "http://h/download/1?sig=x",
    "md5": "93230c3bde425a9d7984a594ac55ea1e",
    "sign": "93230c3bde425a9d7984a594ac55ea1e",
    "signMethod": "Md5",
    "module": "mcu",
    "extData": {"key1": "value1"},
}


def test_upgrade_push_decodes():
    u = protocol.parse_upgrade(protocol.encode_upgrade(DATA, 1626969597470))
    assert u == Upgrade(
        "1626969597470", "2.0.0", DATA["url"], 432945, DATA["sign"], "Md5", "mcu",
        ext_data={"key1": "value1"},
    )  # fmt: skip


def test_upgrade_sha256_diff_default_module():
    data = {k: v for k, v in DATA.items() if k not in ("md5", "module")}
    data |= {"signMethod": "SHA256", "sign": "AB" * 32, "isDiff": 1, "digestsign": "c2ln"}
    u = protocol.parse_upgrade(protocol.encode_upgrade(data, 1))
    assert isinstance(u, Upgrade)
    assert (u.module, u.is_diff, u.sign, u.digestsign) == ("default", True, "ab" * 32, "c2ln")


def test_empty_reply_means_nothing_pending():
    assert protocol.parse_upgrade(protocol.encode_firmware_get_reply("3", None)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"size": "432945"},  # the SDKs need a JSON number
        {"size": True},
        {"size": 0},
        {"signMethod": "MD5"},  # the SDKs reject this spelling
        {"sign": "abc"},
        {"version": ""},
        {"url": None},
        {"module": 3},
    ],
)
def test_bad_upgrade_is_rejected(change):
    assert isinstance(protocol.parse_upgrade(protocol.encode_upgrade(DATA | change, 1)), Rejected)


@pytest.mark.parametrize("payload", [b"nope", b"[]", b'{"data": []}', b"x" * 70000])
def test_garbage_upgrade_is_rejected(payload):
    assert isinstance(protocol.parse_upgrade(payload), Rejected)


def test_broker_urls():
    assert MqttEndpoint.from_url("mqtt://127.0.0.1:1884") == MqttEndpoint("127.0.0.1", 1884)
    a = MqttEndpoint.from_url("mqtts://u%40x:p@broker")
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker", 8883, True, "u@x", "p")
    assert a.url == "mqtts://broker:8883"
    assert redact("mqtts://u%40x:p@broker:8883") == "mqtts://u%40x:***@broker:8883"
    with pytest.raises(ValueError, match="scheme"):
        MqttEndpoint.from_url("http://broker")
