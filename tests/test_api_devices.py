"""A device's identity over HTTP: credentials, enable/disable, rotate, delete, and the console's
session calling them. The broker is left alone (broker_auth="none"): tests/test_device_identity.py
shows what these do to live connections on a Mosquitto that enforces identity."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlmodel import select

from ota.db.engine import session_scope
from ota.db.models import Task
from ota.identity.credentials import device_credentials
from tests.test_api_support import TOKEN, api_client, api_settings, assert_problem, fleet
from tests.test_workflow_support import make_task

DN = "dev-0000"


@pytest.fixture
async def client(tmp_path, database_url):
    async with api_client(api_settings(tmp_path, database_url, broker_auth="none")) as c:
        yield c


def device_url(pk: str, dn: str = DN, tail: str = "") -> str:
    return f"/api/v1/products/{pk}/devices/{dn}{tail}"


async def registered(client: httpx.AsyncClient, pk: str = "pk1") -> tuple[str, str]:
    """A product with one device; its secret as the registration answered it, once."""
    await fleet(client, pk)
    r = await client.post(f"/api/v1/products/{pk}/devices", json={"name": DN, "version": "1.0.0"})
    assert r.status_code == 201, r.text
    assert r.json()["broker"] == "off"
    return pk, r.json()["secret"]


def add_task(client: httpx.AsyncClient, pk: str, state: str) -> None:
    """A batch with one task of the device, in `state`, written as the batch workflow would."""
    engine = client.app.state.ctx.engine  # type: ignore[attr-defined]
    make_task(engine, pk, DN, state, batch_id=f"b-{state}")


async def test_credentials_are_the_connection_parameters_of_the_secret(client):
    pk, secret = await registered(client)
    r = await client.get(device_url(pk, tail="/credentials"))
    assert r.status_code == 200, r.text
    creds = r.json()
    expected = device_credentials(pk, DN, secret)
    assert creds["device_secret"] == secret
    assert (creds["client_id"], creds["username"], creds["password"]) == (
        expected.client_id,
        expected.username,
        expected.password,
    )
    assert creds["host"] == "127.0.0.1" and creds["port"] == 1883 and creds["tls"] is False
    assert creds["enabled"] is True
    assert creds["product_key"] == pk and creds["device_name"] == DN

    body = assert_problem(await client.get(device_url(pk, "dev-9999", "/credentials")), 404)
    assert f"{pk}/dev-9999" in body["detail"]
    assert_problem(await client.get(device_url("nope", tail="/credentials")), 404)
    r = await client.get(device_url("bad key!", tail="/credentials"))
    assert_problem(r, 422, "product_key")


async def test_enabled_toggles_and_the_list_says_so(client):
    pk, _ = await registered(client)
    r = await client.put(device_url(pk, tail="/enabled"), json={"enabled": False})
    assert r.status_code == 200, r.text
    assert r.json() == {"product_key": pk, "device_name": DN, "enabled": False} | {
        "broker": "off",
        "changed": 0,
    }
    assert (await client.get(device_url(pk, tail="/credentials"))).json()["enabled"] is False
    [listed] = (await client.get(f"/api/v1/products/{pk}/devices")).json()["items"]
    assert listed["enabled"] is False and listed["online"] is False
    r = await client.put(device_url(pk, tail="/enabled"), json={"enabled": True})
    assert r.json()["enabled"] is True
    assert (await client.get(f"/api/v1/products/{pk}/devices")).json()["items"][0]["enabled"]

    for body in ({}, {"enabled": "perhaps"}):
        assert_problem(await client.put(device_url(pk, tail="/enabled"), json=body), 422, "enabled")
    r = await client.put(device_url(pk, "dev-9999", "/enabled"), json={"enabled": False})
    assert_problem(r, 404)


async def test_rotate_makes_new_parameters_and_the_old_ones_are_gone(client):
    pk, secret = await registered(client)
    old = (await client.get(device_url(pk, tail="/credentials"))).json()
    r = await client.post(device_url(pk, tail="/rotate-secret"))
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["device_secret"] != secret and new["password"] != old["password"]
    assert new["username"] == old["username"] and new["client_id"] == old["client_id"]
    assert new["password"] == device_credentials(pk, DN, new["device_secret"]).password
    assert (await client.get(device_url(pk, tail="/credentials"))).json() == new
    assert_problem(await client.post(device_url(pk, "dev-9999", "/rotate-secret")), 404)


async def test_delete_is_refused_while_a_task_is_active_and_done_otherwise(client):
    pk, _ = await registered(client)
    add_task(client, pk, "in_upgrade")
    body = assert_problem(await client.delete(device_url(pk)), 409, "device_name")
    assert "active task in batch b-in_upgrade" in body["detail"]
    assert body["errors"] == [{"field": "device_name", "detail": body["detail"]}]
    assert (await client.get(device_url(pk, tail="/credentials"))).status_code == 200

    engine = client.app.state.ctx.engine  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        for task in session.exec(select(Task)):
            task.state = "updated"
            session.add(task)
    r = await client.delete(device_url(pk))
    assert r.status_code == 200, r.text
    assert r.json() == {"product_key": pk, "device_name": DN, "deleted": True}
    listed = (await client.get(f"/api/v1/products/{pk}/devices")).json()
    assert listed == {"items": [], "next_after_id": None, "prev_before_id": None}
    assert_problem(await client.get(device_url(pk, tail="/credentials")), 404)
    assert_problem(await client.delete(device_url(pk)), 404)


async def test_the_console_session_reaches_them_and_its_page_holds_no_secret(
    tmp_path, database_url
):
    settings = api_settings(tmp_path, database_url, broker_auth="none")
    async with api_client(settings) as api, api_client(settings, auth=False) as browser:
        pk, secret = await registered(api)
        r = await browser.post("/login", data={"token": TOKEN, "next": "/products"})
        assert r.status_code == 303
        console: dict[str, Any] = {"headers": {"X-OTA-Console": "1"}}
        # The cookie alone (a cross-site form) reaches none of them.
        assert_problem(await browser.get(device_url(pk, tail="/credentials")), 401)
        assert_problem(await browser.delete(device_url(pk)), 401)

        creds = (await browser.get(device_url(pk, tail="/credentials"), **console)).json()
        assert creds["device_secret"] == secret
        page = (await browser.get(f"/products/{pk}/devices")).text
        for value in (secret, creds["password"]):
            assert value not in page
        assert f'data-device="{DN}" data-online="no" data-enabled="yes"' in page

        r = await browser.put(device_url(pk, tail="/enabled"), json={"enabled": False}, **console)
        assert r.status_code == 200, r.text
        page = (await browser.get(f"/products/{pk}/devices")).text
        assert f'data-device="{DN}" data-online="no" data-enabled="no"' in page
