"""The CLI's `firmware diff`, `product rotate-key` and `retire-key` over HTTP: the same services,
their refusals as problem details naming the body's (or the URL's) field."""

from __future__ import annotations

import os

import bsdiff4
import pytest

from ota.db.engine import session_scope
from ota.db.models import Batch
from ota.services.security import PREVIOUS, SIGN_WITH
from ota.urls import download_url
from tests.test_api_support import api_client, api_settings, assert_problem, fleet, upload


@pytest.fixture
async def client(tmp_path, database_url):
    async with api_client(api_settings(tmp_path, database_url)) as c:
        yield c


async def full(client, pk: str, version: str, content: bytes, module: str = "default") -> dict:
    fields = {
        "name": f"fw_{version.replace('.', '_')}",
        "product_key": pk,
        "version": version,
        "module": module,
        "need_verify": "false",
    }
    r = await upload(client, fields, content=content)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_a_diff_is_made_from_two_full_images_and_rebuilds_the_target(client):
    pk = await fleet(client, versions=["1.0.0"])
    old = os.urandom(64 * 1024)
    new = old[:40_000] + b"the fix" + old[40_000:]
    a = await full(client, pk, "1.0.0", old)
    b = await full(client, pk, "2.0.0", new)

    r = await client.post(
        "/api/v1/firmware/diff", json={"from_id": a["id"], "to_id": b["id"], "need_verify": False}
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["type"], made["src_versions"], made["version"]) == ("diff", ["1.0.0"], "2.0.0")
    assert made["name"] == "fw_2_0_0_diff" and made["state"] == "verified"
    assert made["target_size"] == len(new) and made["source_size"] == len(old)
    assert made["saved_bytes"] == len(new) - made["size"] > 0
    shown = (await client.get(f"/api/v1/firmware/{made['id']}")).json()
    assert shown["size"] == made["size"] and shown["type"] == "diff"

    # What a device on 1.0.0 downloads patches its image into exactly 2.0.0.
    settings = client.app.state.ctx.settings
    url = download_url(settings, made["id"], pk, "dev-0000")
    package = await client.get(url.replace(settings.resolved_public_url, ""))
    assert package.status_code == 200
    assert bsdiff4.patch(old, package.content) == new

    # The same pair again, named and described: its own firmware (needing validation).
    body = {"from_id": a["id"], "to_id": b["id"], "name": "thermo_patch", "description": "fix"}
    r = await client.post("/api/v1/firmware/diff", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["name"], r.json()["description"], r.json()["state"]) == (
        "thermo_patch",
        "fix",
        "unverified",
    )


async def test_a_diff_refused_names_the_field_at_fault(client):
    pk = await fleet(client)
    other = await fleet(client, pk="pk2")
    a = await full(client, pk, "1.0.0", b"image one " * 100)
    b = await full(client, pk, "2.0.0", b"image two " * 100)
    same_version = await full(client, pk, "2.0.0", b"image 2bis " * 100, module="wifi")
    elsewhere = await full(client, other, "3.0.0", b"image three " * 100)
    made = (
        await client.post("/api/v1/firmware/diff", json={"from_id": a["id"], "to_id": b["id"]})
    ).json()

    async def refused(body: dict, status: int, field: str | None) -> str:
        r = await client.post("/api/v1/firmware/diff", json=body)
        return assert_problem(r, status, field)["detail"]  # type: ignore[no-any-return]

    assert "another firmware" in await refused({"from_id": a["id"], "to_id": a["id"]}, 422, "to_id")
    assert "is a diff" in await refused({"from_id": made["id"], "to_id": b["id"]}, 422, "from_id")
    assert "is a diff" in await refused({"from_id": a["id"], "to_id": made["id"]}, 422, "to_id")
    assert "one product and module" in await refused(
        {"from_id": a["id"], "to_id": elsewhere["id"]}, 422, "to_id"
    )
    assert "one product and module" in await refused(
        {"from_id": a["id"], "to_id": same_version["id"]}, 422, "to_id"
    )
    await refused({"from_id": a["id"], "to_id": 999_999}, 404, None)
    await refused({"from_id": a["id"], "to_id": b["id"], "name": "_x"}, 422, "name")
    await refused(
        {"from_id": a["id"], "to_id": b["id"], "description": "d" * 101}, 422, "description"
    )
    await refused({"from_id": a["id"]}, 422, "to_id")
    await refused({"from_id": str(a["id"]), "to_id": b["id"]}, 422, "from_id")
    await refused({"from_id": a["id"], "to_id": b["id"], "from": 1}, 422, "from")
    # Nothing was added by the refusals.
    listed = (await client.get("/api/v1/firmware", params={"product_key": pk})).json()["items"]
    assert sorted(fw["id"] for fw in listed) == sorted(
        [a["id"], b["id"], same_version["id"], made["id"]]
    )


async def test_rotate_and_retire_a_products_key(client):
    pk = await fleet(client)
    url = f"/api/v1/products/{pk}"
    assert (
        "turn secure update on"
        in assert_problem(await client.post(f"{url}/rotate-key"), 409, "product_key")["detail"]
    )
    assert (
        "no previous key"
        in assert_problem(await client.post(f"{url}/retire-key"), 409, "product_key")["detail"]
    )
    r = await client.put(f"{url}/secure-update", json={"enabled": True})
    assert r.status_code == 200, r.text
    first_pem = r.json()["public_key"]
    carrier_fields = {
        "name": "carrier", "product_key": pk, "version": "3.0.0", "need_verify": "false",
        "sign_with": PREVIOUS, "ext_data": '{"kind": "key"}',
    }  # fmt: skip
    # Step 3 of a rotation (docs/security.md) needs one under way, over HTTP as in the CLI.
    r = await upload(client, carrier_fields, content=b"carrier image")
    assert "rotate-key" in assert_problem(r, 422, "sign_with")["detail"]

    r = await client.post(f"{url}/rotate-key")
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["previous_key"] and rotated["key"] != rotated["previous_key"]
    assert rotated["key_rotated_at"] and "PRIVATE" not in r.text
    shown = (await client.get(url)).json()
    assert shown["public_key"] != first_pem
    assert (
        "already rotating"
        in assert_problem(await client.post(f"{url}/rotate-key"), 409, "product_key")["detail"]
    )

    # A batch of the carrier (signed with the previous key) still running: retiring is refused,
    # unless forced.
    engine = client.app.state.ctx.engine
    for bad, field in (({"sign_with": "older"}, "sign_with"), ({"ext_data": "[1]"}, "ext_data")):
        r = await upload(client, {**carrier_fields, **bad}, content=b"carrier image")
        assert_problem(r, 422, field)
    r = await upload(client, carrier_fields, content=b"carrier image")
    assert r.status_code == 201, r.text
    carrier = r.json()
    assert carrier["ext_data"] == {"kind": "key", SIGN_WITH: PREVIOUS}
    with session_scope(engine) as s:
        s.add(Batch(id="b-carrier", firmware_id=carrier["id"], product_key=pk, module="default",
                    target_version="3.0.0"))  # fmt: skip
    detail = assert_problem(await client.post(f"{url}/retire-key"), 409, "product_key")["detail"]
    assert "b-carrier" in detail
    assert_problem(await client.post(f"{url}/retire-key", params={"force": "maybe"}), 422, "force")
    r = await client.post(f"{url}/retire-key", params={"force": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["previous_key"] is None and r.json()["key"] == rotated["key"]
    assert (
        "no previous key"
        in assert_problem(await client.post(f"{url}/retire-key"), 409, "product_key")["detail"]
    )

    # Unknown products are a 404; both operations are in the schema.
    assert_problem(await client.post("/api/v1/products/none/rotate-key"), 404)
    assert_problem(await client.post("/api/v1/products/none/retire-key"), 404)
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/api/v1/firmware/diff", "/api/v1/products/{product_key}/rotate-key",
                 "/api/v1/products/{product_key}/retire-key"):  # fmt: skip
        assert paths[path]["post"]["summary"], path
