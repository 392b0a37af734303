"""ota_auth, our Mosquitto plugin, on a real broker: Alibaba's signatures in the forms its SDKs
use, ACLs derived from the username, a control topic that survives garbage and only answers the
admin, and users that survive a restart. (What it shares with dynamic-security is tested by
tests/test_device_identity.py against both.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from ota import protocol
from ota.context import Context
from ota.identity import control
from ota.identity.accounts import ServiceRole, service_endpoint
from ota.identity.broker_setup import USERS_FILE
from ota.identity.control import check
from ota.identity.ota_auth import REQUEST_TOPIC, OtaAuth
from ota.mqtt import MqttEndpoint
from ota.services import devices
from ota.services.products import add_product
from ota.settings import Settings
from tests.fixtures.mqtt import SecureBroker
from tests.test_workflow_support import new_key

pytestmark = pytest.mark.parametrize("secure_broker", ["plugin"], indirect=True)
RESPONSE_TOPIC = f"{REQUEST_TOPIC}/response"
DIGESTS = {"hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256, "hmacmd5": hashlib.md5}


@pytest.fixture
def ctx(tmp_path: Path, secure_broker: SecureBroker) -> Context:
    return Context(
        Settings(
            home=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ota.db'}",
            **secure_broker.settings(),  # type: ignore[arg-type]
        )
    )


def register(ctx: Context, count: int = 1) -> tuple[str, dict[str, str]]:
    pk = new_key()
    add_product(ctx.engine, pk, "ota_auth test")
    secrets = {}
    for i in range(count):
        view = devices.add_device(ctx.engine, ctx.settings, pk, f"dev{i:03d}", "1.0.0")
        assert view.broker == "synced" and view.secret
        secrets[view.name] = view.secret
    return pk, secrets


def signed(
    secret: str,
    pk: str,
    dn: str,
    cid: str,
    method: str = "hmacsha1",
    ts: str | None = None,
    extra: str = "securemode=3,",
) -> tuple[str, str]:
    """(client id, password) as Alibaba's SDKs make them."""
    params = f"{extra}signmethod={method}" + (f",timestamp={ts}" if ts is not None else "")
    content = f"clientId{cid}deviceName{dn}productKey{pk}" + (f"timestamp{ts}" if ts else "")
    password = hmac.new(secret.encode(), content.encode(), DIGESTS[method]).hexdigest()
    return f"{cid}|{params}|", password


async def connects(url: str, username: str, password: str, client_id: str) -> bool:
    endpoint = MqttEndpoint.from_url(url).with_credentials(username, password)
    try:
        async with endpoint.client(client_id, timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


async def test_the_signatures_alibabas_sdks_make_connect_and_nothing_else(ctx, secure_broker):
    pk, secrets = register(ctx)
    [(dn, secret)] = secrets.items()
    user, url = f"{dn}&{pk}", secure_broker.url
    now = str(int(time.time()))
    accepted = [
        signed(secret, pk, dn, f"{pk}&{dn}", "hmacsha1", now, "securemode=3,ext=1,_v=1.2.13,"),
        signed(secret, pk, dn, f"{pk}.{dn}", "hmacsha256", "2524608000000"),
        signed(secret, pk, dn, f"{pk}.{dn}", "hmacmd5"),  # no timestamp: none signed
    ]
    for client_id, password in accepted:
        assert await connects(url, user, password, client_id), client_id
    cid_sha256, pw_sha256 = accepted[1]
    assert await connects(url, user, pw_sha256.upper(), cid_sha256)  # hex in either case

    wrong_ts, _ = signed(secret, pk, dn, f"{pk}.{dn}", "hmacsha1", "2")
    _, pw_ts1 = signed(secret, pk, dn, f"{pk}.{dn}", "hmacsha1", "1")
    other = signed(secret, pk, "dev999", f"{pk}.dev999")  # another device's client id
    refused = [
        (wrong_ts, pw_ts1),  # signed for another timestamp
        (f"{pk}.{dn}", pw_sha256),  # a plain client id names no sign method
        (f"{pk}.{dn}|securemode=2|", pw_sha256),  # nor does this one
        (cid_sha256.replace("hmacsha256", "hmacsha512"), pw_sha256),
        (cid_sha256.replace(f"{pk}.{dn}", f"{pk}.{dn}x"), pw_sha256),
        other,
        ("ota-bridge", pw_sha256),
        (cid_sha256, pw_sha256[:-2]),
        (cid_sha256, ""),
    ]
    for client_id, password in refused:
        assert not await connects(url, user, password, client_id), client_id
    assert not await connects(url, f"{dn}&{pk}x", *reversed(accepted[0]))  # unknown user


async def _granted(endpoint: MqttEndpoint, client_id: str, filters: list[str]) -> list[bool]:
    async with endpoint.client(client_id, timeout=5) as client:
        return [not (await client.subscribe(f, qos=1))[0].is_failure for f in filters]


async def test_subscriptions_follow_the_username_and_the_services_rules(ctx, secure_broker):
    pk, secrets = register(ctx, 2)
    (dn, secret), (other, _) = secrets.items()
    client_id, password = signed(secret, pk, dn, f"{pk}.{dn}")
    device = MqttEndpoint.from_url(secure_broker.url).with_credentials(f"{dn}&{pk}", password)
    own = [
        protocol.upgrade_topic(pk, dn),
        f"/sys/{pk}/{dn}/#",
        protocol.firmware_get_reply_topic(pk, dn),
        f"$share/g/{protocol.upgrade_topic(pk, dn)}",
    ]
    others = [
        protocol.upgrade_topic(pk, other),
        protocol.upgrade_topic(pk, "+"),
        f"/sys/{pk}/+/#",
        f"/sys/{pk}/{other}/#",
        f"/sys/{pk}/{dn}x/#",
        protocol.inform_topic(pk, dn),  # its own reports are for the bridge
        "#",
        "$CONTROL/ota-auth/v1/response",
        "$SYS/#",
    ]
    assert await _granted(device, client_id, own + others) == [True] * len(own) + [False] * len(
        others
    )

    settings = Settings(**secure_broker.settings())  # type: ignore[arg-type]
    bridge = service_endpoint(settings, ServiceRole.BRIDGE)
    allowed = [*protocol.DEVICE_TOPIC_FILTERS.values(), f"/ota/device/inform/{pk}/+"]
    allowed += [f"$share/ota/{f}" for f in protocol.DEVICE_TOPIC_FILTERS.values()]
    allowed.append("$SYS/broker/uptime")  # a broker restart under a kept session (reconcile.py)
    denied = ["/ota/device/#", "#", "/ota/device/upgrade/+/+", "/sys/+/+/#", "+/#", "$SYS/#"]
    granted = await _granted(bridge, "test-bridge", allowed + denied)
    assert granted == [True] * len(allowed) + [False] * len(denied)
    worker = service_endpoint(settings, ServiceRole.WORKER)
    assert await _granted(worker, "test-worker", ["#", protocol.upgrade_topic("+", "+")]) == [
        False,
        False,
    ]


@contextlib.asynccontextmanager
async def _admin(settings: Settings):  # type: ignore[no-untyped-def]
    endpoint = service_endpoint(settings, ServiceRole.ADMIN)
    async with endpoint.client("test-admin-raw", timeout=10) as client:
        await client.subscribe(RESPONSE_TOPIC, qos=1)
        yield client


async def _ask(client: aiomqtt.Client, payload: bytes) -> list[dict]:
    await client.publish(REQUEST_TOPIC, payload, qos=1)
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return json.loads(message.payload)["responses"]
    raise AssertionError("no response")


async def test_the_control_topic_survives_garbage_and_answers_only_the_admin(ctx, secure_broker):
    settings = Settings(**secure_broker.settings())  # type: ignore[arg-type]
    pk, secrets = register(ctx)
    [(dn, secret)] = secrets.items()
    bad_commands = [
        5,
        {"command": 7},
        {"command": "nope"},
        {"command": "setDevice"},
        {"command": "setDevice", "username": f"x&{pk}", "secret": 5},
        {"command": "setDevice", "username": "no-ampersand", "secret": "s"},
        {"command": "setDevice", "username": f"a/b&{pk}", "secret": "s"},  # '/' in a topic level
        {"command": "setDevice", "username": f"x&{pk}", "secret": "s" * 1000},
        {"command": "setDevice", "username": f"x&{pk}", "secret": "s", "enabled": "yes"},
        {"command": "setService", "username": "ota-admin", "password": "p"},
        {"command": "setService", "username": "s1", "password": "p", "acls": [{"access": "x"}]},
        {"command": "setService", "username": "s1", "password": "p", "acls": "#"},
        {"command": "deleteUser", "username": "nobody"},
        {"command": "getUsers", "usernames": "nobody"},
    ]
    async with _admin(settings) as admin:
        for garbage in (b"not json", b"{}", b'{"commands": 5}', b"\xff\xfe", b"[" * 5000):
            [response] = await _ask(admin, garbage)
            assert response["error"], garbage
        responses = await _ask(admin, json.dumps({"commands": bad_commands}).encode())
        assert len(responses) == len(bad_commands)
        assert all(r.get("error") for r in responses), responses
        huge = {"command": "setDevice", "username": f"h&{pk}", "secret": "s" * 900_000}
        [response] = await _ask(admin, json.dumps({"commands": [huge]}).encode())
        assert response["error"] == "a field is too long"

    # A device and a service try to make themselves a user: the broker ignores them (and drops
    # who published where its ACL denies).
    forged = json.dumps(
        {"commands": [{"command": "setDevice", "username": f"evil&{pk}", "secret": "e" * 32}]}
    )
    client_id, password = signed(secret, pk, dn, f"{pk}.{dn}")
    device = MqttEndpoint.from_url(secure_broker.url).with_credentials(f"{dn}&{pk}", password)
    for endpoint, cid in (
        (device, client_id),
        (service_endpoint(settings, ServiceRole.BRIDGE), "test-bridge"),
    ):
        with contextlib.suppress(aiomqtt.MqttError):
            async with endpoint.client(cid, timeout=5) as client:
                await client.publish(REQUEST_TOPIC, forged, qos=1)
                await asyncio.sleep(0.3)
    async with OtaAuth(service_endpoint(settings, ServiceRole.ADMIN)) as broker:
        [found] = await broker.run(
            [{"command": "getUsers", "usernames": [f"evil&{pk}", f"{dn}&{pk}"]}]
        )
        check([found])
    assert [u["username"] for u in found["data"]["users"]] == [f"{dn}&{pk}"]
    assert await connects(secure_broker.url, f"{dn}&{pk}", password, client_id)


async def test_users_survive_a_restart_in_a_file_only_the_broker_reads(ctx, secure_broker):
    pk, secrets = register(ctx)
    [(dn, secret)] = secrets.items()
    client_id, password = signed(secret, pk, dn, f"{pk}.{dn}")
    users_file = secure_broker.home / "mosquitto" / USERS_FILE
    assert users_file.stat().st_mode & 0o777 == 0o600
    secure_broker.kill()  # no orderly shutdown: the file was saved when the user was set
    secure_broker.start()
    assert await connects(secure_broker.url, f"{dn}&{pk}", password, client_id)


async def test_a_sync_saves_the_users_file_once_not_once_a_message(ctx, secure_broker, monkeypatch):
    """Each save writes the whole table: saved once a message, 100,000 devices' users in 100
    messages wrote 650 MB (bench/scale.py). A message that says deferSave is live at once and
    saved with the next message that does not say it: a sync's last."""
    settings = Settings(**secure_broker.settings())  # type: ignore[arg-type]
    users_file = secure_broker.home / "mosquitto" / USERS_FILE
    pk = new_key()
    secret = "d" * 32
    set_a = {"command": "setDevice", "username": f"defer1&{pk}", "secret": secret, "tag": "t"}
    client_id, password = signed(secret, pk, "defer1", f"{pk}.defer1")
    async with _admin(settings) as admin:
        [response] = await _ask(
            admin, json.dumps({"commands": [set_a], "deferSave": True}).encode()
        )
        assert "error" not in response
        assert await connects(secure_broker.url, f"defer1&{pk}", password, client_id)
        assert f"defer1&{pk}" not in users_file.read_text()  # live, not saved yet
        assert await _ask(admin, b'{"commands": []}') == []  # a message that does not defer
        assert f"defer1&{pk}" in users_file.read_text()

    # A registration whose users take several messages: all but the last defer.
    monkeypatch.setattr(control, "MESSAGE_BYTES", 600)  # three devices a message, about
    sent: list[bool] = []  # for each message of setDevice commands: did it defer?
    send = control.ControlClient._send

    async def spy(self, commands, defer=False):  # type: ignore[no-untyped-def]
        if '"setDevice"' in commands[0]:
            sent.append(defer)
        return await send(self, commands, defer)

    monkeypatch.setattr(control.ControlClient, "_send", spy)
    add_product(ctx.engine, pk, "deferSave test")
    names = [f"dev{i:03d}" for i in range(12)]
    registered = devices.import_devices(ctx.engine, ctx.settings, pk, "\n".join(names))
    assert registered.broker == "synced"
    assert len(sent) > 2 and sent == [True] * (len(sent) - 1) + [False]
    saved = json.loads(users_file.read_text())
    assert {f"{n}&{pk}" for n in names} <= {u["username"] for u in saved["users"]}
    client_id, password = signed(registered.secrets["dev011"], pk, "dev011", f"{pk}.dev011")
    assert await connects(secure_broker.url, f"dev011&{pk}", password, client_id)
