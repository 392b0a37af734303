"""The HTTP API: auth, the OpenAPI schema, and every Add Firmware rule as problem details."""

from __future__ import annotations

import time

import httpx
import pytest

from ota.api import sessions
from ota.api.app import create_app
from ota.urls import download_url
from tests.test_api_support import (
    TOKEN,
    api_client,
    api_settings,
    assert_problem,
    firmware,
    fleet,
    upload,
)


@pytest.fixture
async def client(tmp_path, database_url):
    async with api_client(api_settings(tmp_path, database_url)) as c:
        yield c


async def test_the_api_needs_the_bearer_token_and_the_download_route_does_not(
    tmp_path, database_url
):
    settings = api_settings(tmp_path, database_url)
    async with api_client(settings) as authed, api_client(settings, auth=False) as anon:
        pk = await fleet(authed, versions=["1.0.0"])
        fw = await firmware(authed, pk)

        r = await anon.get("/api/v1/firmware")
        body = assert_problem(r, 401)
        assert r.headers["www-authenticate"] == 'Bearer realm="ota"'
        assert "Bearer" in body["detail"]

        r = await anon.get("/api/v1/firmware", headers={"Authorization": "Bearer nope"})
        assert_problem(r, 401)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        r = await anon.get("/api/v1/firmware", headers={"Authorization": f"Basic {TOKEN}"})
        assert_problem(r, 401)
        for method, path in [("POST", "/api/v1/products"), ("DELETE", "/api/v1/firmware/1")]:
            assert_problem(await anon.request(method, path, json={}), 401)
        assert (
            await anon.get("/api/v1/firmware", headers={"Authorization": f"Bearer {TOKEN}"})
        ).status_code == 200

        # Devices fetch firmware with their own signed URLs, never the API token.
        url = download_url(settings, fw["id"], pk, "dev-0000")
        r = await anon.get(url.replace(settings.resolved_public_url, ""))
        assert r.status_code == 200 and r.content == b"\x7fELF firmware image"
        r = await anon.get(f"/download/{fw['id']}?pk={pk}&dn=dev-0000&expires=9999999999&sig=x")
        assert r.status_code == 403


async def test_the_console_cookie_counts_only_with_the_console_header(tmp_path, database_url):
    settings = api_settings(tmp_path, database_url)
    async with api_client(settings, auth=False) as browser:
        r = await browser.get("/firmware")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Ffirmware"
        r = await browser.post("/login", data={"token": "wrong", "next": "/firmware"})
        assert r.status_code == 401 and "not the API token" in r.text
        r = await browser.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert r.status_code == 303 and r.headers["location"] == "/firmware"  # no open redirect
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert (await browser.get("/firmware")).status_code == 200
        # A cross-site form could send the cookie, but not the header: no CSRF.
        assert_problem(await browser.get("/api/v1/products"), 401)
        r = await browser.get("/api/v1/products", headers={"X-OTA-Console": "1"})
        assert r.status_code == 200
        await browser.post("/logout")
        assert (await browser.get("/firmware")).status_code == 303


async def login(browser: httpx.AsyncClient) -> str:
    r = await browser.post("/login", data={"token": TOKEN, "next": "/firmware"})
    assert r.status_code == 303, r.text
    return browser.cookies["ota_session"]


async def test_a_logged_out_session_is_refused_even_replayed_on_another_process(
    tmp_path, database_url
):
    """Logout used to only ask the browser to forget a cookie that worked forever. Two apps
    on one database stand for two API processes of one installation."""
    settings = api_settings(tmp_path, database_url)
    async with api_client(settings, auth=False) as browser, api_client(settings, auth=False) as b:
        cookie = await login(browser)
        replay = {"Cookie": f"ota_session={cookie}"}
        assert (await b.get("/firmware", headers=replay)).status_code == 200
        await browser.post("/logout")
        for client in (browser, b):
            assert (await client.get("/firmware", headers=replay)).status_code == 303
            r = await client.get("/api/v1/products", headers=replay | {"X-OTA-Console": "1"})
            assert_problem(r, 401)
        await login(browser)  # a new session is a new cookie, not the revoked one
        assert (await browser.get("/firmware")).status_code == 200


async def test_a_session_expires_on_the_server(tmp_path, database_url, monkeypatch):
    settings = api_settings(tmp_path, database_url, console_session_hours=12)
    async with api_client(settings, auth=False) as browser:
        r = await browser.post("/login", data={"token": TOKEN, "next": "/firmware"})
        assert "Max-Age=43200" in r.headers["set-cookie"]  # the browser forgets it then too
        # Sent by hand: a replayed cookie, whatever the browser's jar thinks of its age.
        console = {"X-OTA-Console": "1", "Cookie": f"ota_session={browser.cookies['ota_session']}"}
        browser.cookies.clear()
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + 11.9 * 3600)
        assert (await browser.get("/api/v1/products", headers=console)).status_code == 200
        monkeypatch.setattr(time, "time", lambda: now + 12 * 3600 + 1)
        assert_problem(await browser.get("/api/v1/products", headers=console), 401)
        assert (await browser.get("/firmware", headers=console)).status_code == 303


def test_only_a_session_we_signed_and_still_running_is_read():
    now = 1_800_000_000.0
    value = sessions.issue(TOKEN, now)
    found = sessions.read(TOKEN, value, 12, now + 60)
    assert found is not None and found.expires_at.timestamp() == now + 12 * 3600
    issued, session_id, mac = value.split(".")
    for forged in [
        sessions.issue("another token", now),
        f"{int(now) + 3600}.{session_id}.{mac}",  # a later issue time under the same signature
        f"{issued}.{session_id}.{mac[:-1]}\u00e9",  # not even ASCII
        mac,  # the cookie of old: the same value forever
        "",
    ]:
        assert sessions.read(TOKEN, forged, 12, now) is None, forged
    assert (
        sessions.read(TOKEN, sessions.issue(TOKEN, now + 3600), 12, now) is None
    )  # from the future
    assert sessions.read(TOKEN, value, 12, now + 12 * 3600) is None


async def test_without_a_configured_token_one_is_generated_never_an_open_api(tmp_path):
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", api_token=None)
    app = create_app(settings)
    token = (settings.home / "api-token").read_text().strip()
    assert len(token) >= 24 and app.state.api_token == token
    assert create_app(settings).state.api_token == token  # every process of the installation
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ota.test"
    ) as c:
        assert_problem(await c.get("/api/v1/products"), 401)
        r = await c.get("/api/v1/products", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    app.state.ctx.engine.dispose()


async def test_openapi_lists_the_operations_and_the_cloud_names(client):
    r = await client.get("/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200
    schema = r.json()
    operations = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    for op in [
        ("GET", "/api/v1/products"),
        ("POST", "/api/v1/products"),
        ("GET", "/api/v1/products/{product_key}/devices"),
        ("POST", "/api/v1/products/{product_key}/devices"),
        ("GET", "/api/v1/products/{product_key}/versions"),
        ("GET", "/api/v1/firmware"),
        ("POST", "/api/v1/firmware"),
        ("DELETE", "/api/v1/firmware/{firmware_id}"),
        ("POST", "/api/v1/firmware/{firmware_id}/verifications"),
        ("POST", "/api/v1/firmware/{firmware_id}/batches"),
        ("GET", "/api/v1/batches/{batch_id}"),
        ("GET", "/api/v1/batches/{batch_id}/tasks"),
        ("POST", "/api/v1/batches/{batch_id}/cancel"),
        ("POST", "/api/v1/batches/{batch_id}/pause"),
        ("POST", "/api/v1/batches/{batch_id}/resume"),
        ("POST", "/api/v1/batches/{batch_id}/promote"),
    ]:
        assert op in operations, op
    assert not any(p.startswith("/download") for p in schema["paths"])
    promote = schema["paths"]["/api/v1/batches/{batch_id}/promote"]["post"]
    assert promote["summary"].startswith("Promote: open the phase gate")
    # A receipt like cancel's, pause's and resume's: one status for every signal.
    signals = ("cancel", "pause", "resume", "promote")
    for signal in signals:
        answers = schema["paths"][f"/api/v1/batches/{{batch_id}}/{signal}"]["post"]["responses"]
        assert "200" in answers and "202" not in answers, signal
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    batch = schema["components"]["schemas"]["BatchCreate"]["properties"]
    assert "MaximumPerMinute" in batch["rate_per_minute"]["description"]
    assert "TargetSelection" in batch["target"]["description"]
    upload_body = schema["paths"]["/api/v1/firmware"]["post"]["requestBody"]["content"]
    assert upload_body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    tasks = schema["paths"]["/api/v1/batches/{batch_id}/tasks"]["get"]["parameters"]
    assert {p["name"] for p in tasks} >= {"state", "reason", "limit", "after_id"}


# Add Firmware: each seed rule broken once; the problem names the field as the form does.
FIRMWARE_CASES = [
    ({"name": "abc"}, "name"),
    ({"name": "_abcd"}, "name"),
    ({"name": "a" * 33}, "name"),
    ({"name": "bad-name"}, "name"),
    ({"product_key": "no such key!"}, "product_key"),
    ({"module": "Bad Module"}, "module"),
    ({"module": "m" * 65}, "module"),
    ({"version": ""}, "version"),
    ({"version": "V2.0"}, "version"),
    ({"version": "v" * 65}, "version"),
    ({"type": "delta"}, "type"),
    ({"type": "diff", "version": "", "dest_version": "2.0.1"}, "src_versions"),
    ({"type": "diff", "version": "", "src_versions": ["1.0.0"]}, "dest_version"),
    ({"type": "1", "version": "", "dest_version": "2.0", "src_versions": ["2.0"]}, "src_versions"),
    ({"src_versions": ["1.0.0"]}, "src_versions"),
    ({"sign_method": "SHA1"}, "sign_method"),
    ({"description": "d" * 101}, "description"),
    ({"FirmwareName": "x"}, "name"),
    ({"unknown_field": "1"}, "unknown_field"),
]


async def test_every_add_firmware_rule_is_a_problem_naming_the_field(client):
    pk = await fleet(client, versions=["1.0.0"])
    base = {"name": "thermo_fw", "product_key": pk, "version": "2.0.0"}
    for change, field in FIRMWARE_CASES:
        fields = {**base, **change}
        if "FirmwareName" in change:
            del fields["name"]
        r = await upload(client, {k: v for k, v in fields.items() if v != ""})
        body = assert_problem(r, 422, field)
        assert body["errors"][0]["field"] == field
    # The file: extension, content, emptiness, presence.
    for file_name, content, detail in [
        ("fw.exe", b"MZ", ".bin, .tar, .gz, .tar.gz, .zip or .gzip"),
        ("fw.zip", b"not a zip", "does not match"),
        ("fw.bin", b"", "empty"),
        (None, b"", "choose a firmware file"),
    ]:
        r = await upload(client, base, file_name, content)
        assert detail in assert_problem(r, 422, "file")["detail"]
    r = await upload(client, {**base, "product_key": "nope"})
    assert_problem(r, 404)
    r = await client.post("/api/v1/firmware", content=b"x", headers={"content-type": "text/plain"})
    assert_problem(r, 422, "file")
    stored = client.app.state.ctx.store.keys()  # type: ignore[attr-defined]
    assert stored == [], "a rejected upload leaves nothing behind"


async def test_the_size_and_count_limits(tmp_path, database_url):
    settings = api_settings(tmp_path, database_url, max_firmware=1, max_firmware_bytes=1000)
    async with api_client(settings) as client:
        pk = await fleet(client)
        base = {"name": "thermo_fw", "product_key": pk, "version": "2.0.0"}
        r = await upload(client, base, content=b"x" * 1001)
        assert assert_problem(r, 422, "file")["detail"] == "must be at most 1,000 bytes"
        r = await client.post(
            "/api/v1/firmware/check", json={**base, "file_name": "a.bin", "file_size": 1001}
        )
        assert_problem(r, 422, "file")
        assert (await upload(client, base, content=b"x" * 1000)).status_code == 201
        r = await upload(client, {**base, "version": "2.0.1"})
        assert "limit of 1 firmware" in assert_problem(r, 409, "firmware")["detail"]


async def test_check_reports_what_the_upload_would(client):
    pk = await fleet(client, versions=["1.0.0", "1.1.0"])
    ok = {"name": "thermo_fw", "product_key": pk, "version": "2.0.0", "file_name": "fw.bin"}
    r = await client.post("/api/v1/firmware/check", json=ok)
    assert r.status_code == 200 and r.json()["version"] == "2.0.0"
    assert_problem(
        await client.post("/api/v1/firmware/check", json={**ok, "name": "_x"}), 422, "name"
    )
    r = await client.post("/api/v1/firmware/check", json={**ok, "file_name": "fw.txt"})
    assert_problem(r, 422, "file")
    r = await client.post(
        "/api/v1/firmware/check", json={k: v for k, v in ok.items() if k != "name"}
    )
    assert_problem(r, 422, "name")
    assert (await client.get(f"/api/v1/products/{pk}/versions")).json() == ["1.0.0", "1.1.0"]


async def test_the_same_firmware_twice_is_a_409_naming_the_field(client):
    """Checked and uploaded alike: a second thermo_fw 2.0.0 would make its name ambiguous."""
    pk = await fleet(client, versions=["1.0.0"])
    base = {"name": "thermo_fw", "product_key": pk, "version": "2.0.0"}
    first = await upload(client, base)
    assert first.status_code == 201, first.text
    twin = f"{pk}/default already has thermo_fw 2.0.0 as firmware {first.json()['id']}"
    r = await client.post("/api/v1/firmware/check", json={**base, "file_name": "fw.bin"})
    assert twin in assert_problem(r, 409, "name")["detail"]
    r = await upload(client, base)
    assert twin in assert_problem(r, 409, "name")["detail"]
    assert len((await client.get("/api/v1/firmware")).json()["items"]) == 1
    assert (await upload(client, {**base, "version": "2.0.1"})).status_code == 201


async def test_products_and_devices(client):
    pk = await fleet(client, versions=["1.0.0", "1.1.0"])
    assert_problem(
        await client.post("/api/v1/products", json={"product_key": pk, "name": "x"}),
        409,
        "product_key",
    )
    assert_problem(
        await client.post("/api/v1/products", json={"product_key": "bad key", "name": "x"}),
        422,
        "product_key",
    )
    assert_problem(await client.post("/api/v1/products", json={"product_key": "pk2"}), 422, "name")
    r = await client.post(f"/api/v1/products/{pk}/devices", json={"name": "ab"})
    assert_problem(r, 422, "name")
    r = await client.post(f"/api/v1/products/{pk}/devices", json={"name": "dev-0000"})
    assert_problem(r, 409, "name")
    r = await client.post("/api/v1/products/none/devices", json={"name": "dev-0009"})
    assert_problem(r, 404)
    csv = "name,version\ndev-0100,1.0.0\ndev-0101,1.2.0\n"
    r = await client.post(f"/api/v1/products/{pk}/devices/import", content=csv)
    assert r.status_code == 201 and r.json()["added"] == 2
    secrets = {d["name"]: d["secret"] for d in r.json()["devices"]}
    assert sorted(secrets) == ["dev-0100", "dev-0101"] and all(
        len(s) == 32 for s in secrets.values()
    )
    r = await client.post(f"/api/v1/products/{pk}/devices/import", content="dev-0102,V1\n")
    assert "line 1" in assert_problem(r, 422, "file")["detail"]
    r = await client.get(f"/api/v1/products/{pk}/devices", params={"version": ["1.0.0", "1.2.0"]})
    listed = r.json()["items"]
    assert sorted(d["name"] for d in listed) == ["dev-0000", "dev-0100", "dev-0101"]
    assert listed[0]["versions"] == {"default": "1.0.0"}
    assert (await client.get(f"/api/v1/products/{pk}/modules")).json() == ["default"]
    r = await client.put(f"/api/v1/products/{pk}/secure-update", json={"enabled": True})
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["secure_update"] is True
    assert shown["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in r.text
    assert_problem(await client.get("/api/v1/products/none"), 404)


async def test_ids_beyond_an_integer_column_are_a_422_problem_not_a_crash(client):
    """SQLite's driver overflowed above 2^63 and PostgreSQL refused above 2^31: both were 500s."""
    too_big = 2**31
    for method, path in [
        ("GET", f"/api/v1/firmware/{too_big}"),
        ("DELETE", f"/api/v1/firmware/{2**64}"),
        ("GET", f"/api/v1/firmware/{too_big}/batches"),
        ("GET", f"/api/v1/batches?firmware_id={too_big}"),
        ("GET", f"/api/v1/batches/b1/tasks?after_id={too_big}"),
    ]:
        r = await client.request(method, path)
        body = assert_problem(r, 422)
        assert body["field"] in ("firmware_id", "after_id"), body
    assert_problem(await client.get(f"/api/v1/firmware/{too_big - 1}"), 404)
    schema = (await client.get("/openapi.json")).json()
    param = schema["paths"]["/api/v1/firmware/{firmware_id}"]["get"]["parameters"][0]
    assert param["schema"]["maximum"] == too_big - 1 and param["schema"]["minimum"] == 1


async def test_a_key_no_row_can_hold_is_not_found_not_a_crash(client):
    """PostgreSQL refuses a NUL byte in a text parameter: these were 500s there."""
    for path in ["/api/v1/products/pk%00", "/api/v1/batches/b%001", "/api/v1/batches/b%00/tasks"]:
        assert_problem(await client.get(path), 404)
    assert_problem(await client.get("/api/v1/firmware", params={"product_key": "a\x00"}), 404)


async def test_a_405_allows_every_method_of_the_path(client):
    for method, path, allowed in [
        ("PUT", "/api/v1/firmware", "GET, POST"),
        ("GET", "/api/v1/firmware/check", "POST"),  # not a firmware id
        ("PUT", "/api/v1/firmware/7", "DELETE, GET"),
        ("PUT", "/api/v1/firmware/7/batches", "GET, POST"),
        ("DELETE", "/api/v1/products", "GET, POST"),
        # Not the device route's DELETE: no device may be called import.
        ("DELETE", "/api/v1/products/pk/devices/import", "POST"),
        ("PUT", "/api/v1/products/pk/devices/imports", "DELETE"),
    ]:
        r = await client.request(method, path)
        assert_problem(r, 405)
        assert r.headers["allow"] == allowed, (method, path, r.headers["allow"])


async def test_the_schema_states_the_services_rules(client):
    from ota.domain import MODULE_RE, RATE_MAX, RATE_MIN, VERSION_RE
    from ota.services.products import PRODUCT_KEY_RE

    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    batch = schemas["BatchCreate"]["properties"]
    assert (batch["rate_per_minute"]["minimum"], batch["rate_per_minute"]["maximum"]) == (
        RATE_MIN,
        RATE_MAX,
    )
    assert batch["max_retries"]["enum"] == [1, 2, 5]
    many, one = batch["src_versions"]["anyOf"]  # a list, or one version (the cloud's form)
    assert many["items"]["pattern"] == one["pattern"] == VERSION_RE.pattern
    assert (
        schemas["ProductCreate"]["properties"]["product_key"]["pattern"] == PRODUCT_KEY_RE.pattern
    )
    assert MODULE_RE.pattern[1:-1] in schemas["DeviceCreate"]["properties"]["module"]["pattern"]
    r = await client.post(
        "/api/v1/batches/b1/cancel",
        content=b"\xff(",  # not UTF-8: a 400, documented
        headers={"Content-Type": "application/json"},
    )
    assert_problem(r, 400)


async def test_import_is_no_device_name_the_csv_import_owns_that_path(client):
    pk = await fleet(client, versions=["1.0.0"])
    r = await client.post(f"/api/v1/products/{pk}/devices", json={"name": "import"})
    assert "reserved" in assert_problem(r, 422, "name")["detail"]
    r = await client.post(f"/api/v1/products/{pk}/devices/import", content="import,1.0.0\n")
    assert "reserved" in assert_problem(r, 422, "file")["detail"]
    r = await client.post(f"/api/v1/products/{pk}/devices", json={"name": "imports"})
    assert r.status_code == 201, r.text
    assert (await client.delete(f"/api/v1/products/{pk}/devices/imports")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    device = schema["components"]["schemas"]["DeviceCreate"]["properties"]["name"]
    assert "(?!(import)$)" in device["pattern"]
    assert "/api/v1/products/{product_key}/devices/{device_name}" in schema["paths"]


async def test_json_bodies_take_the_types_the_schema_states(client):
    """Lax parsing took `"enabled": 0` and `"need_verify": 0` as booleans, `"type": 0`
    (the cloud's number) only by accident, and dropped a blank source version."""
    pk = await fleet(client, versions=["1.0.0"])
    r = await client.put(f"/api/v1/products/{pk}/secure-update", json={"enabled": 0})
    assert_problem(r, 422, "enabled")
    r = await client.put(f"/api/v1/products/{pk}/devices/dev-0000/enabled", json={"enabled": "no"})
    assert_problem(r, 422, "enabled")
    check = {"product_key": pk, "name": "fw_1", "version": "2.0.0", "file_name": "a.gz"}
    assert (await client.post("/api/v1/firmware/check", json=check)).status_code == 200
    assert (
        await client.post("/api/v1/firmware/check", json={**check, "Type": 0})
    ).status_code == 200
    for bad, field in [
        ({"need_verify": 0}, "need_verify"),
        ({"type": 2}, "type"),
        ({"src_versions": [""], "type": "diff"}, "src_versions"),
        ({"src_versions": None}, "src_versions"),
        ({"file_size": "10"}, "file_size"),
    ]:
        assert_problem(
            await client.post("/api/v1/firmware/check", json={**check, **bad}), 422, field
        )
    # JSON Schema's integer includes 30.0; a fraction is refused.
    r = await client.post("/api/v1/firmware/check", json={**check, "file_size": 10.0})
    assert r.status_code == 200, r.text
    assert_problem(
        await client.post("/api/v1/firmware/check", json={**check, "file_size": 10.5}),
        422,
        "file_size",
    )


async def test_the_console_bounds_its_ids_as_the_api_does(tmp_path, database_url):
    """/firmware/{id} and ?after_id= took any integer (a 404 page, or an unchecked page cursor)
    where the API's same parameters are bounded: now both say which field is out of range."""
    async with api_client(api_settings(tmp_path, database_url), auth=False) as browser:
        await login(browser)
        for path, field in [
            (f"/firmware/{2**64}", "firmware_id"),
            ("/firmware/0", "firmware_id"),
            (f"/batches/b1?after_id={2**31}", "after_id"),
            (f"/batches/b1/live?after_id={2**63}", "after_id"),
            ("/batches/b1?after_id=-1", "after_id"),
        ]:
            r = await browser.get(path)
            assert r.status_code == 422 and "text/html" in r.headers["content-type"], path
            assert f"{field}: Input should be" in r.text, r.text
        assert (await browser.get(f"/firmware/{2**31 - 1}")).status_code == 404
