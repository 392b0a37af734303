"""Secure-update keys on SQLite and PostgreSQL: the switch, what is stored, what is shown,
rotation and retirement, and the Signer's cache. The CLI and the API on top."""

from __future__ import annotations

import io
import json

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from ota import signing
from ota.db.engine import session_scope
from ota.db.models import Batch, Product
from ota.errors import Conflict, InvalidInput
from ota.services import products, security
from ota.services.firmware import add_firmware, firmware_public
from ota.settings import Settings
from ota.storage import FirmwareStore
from starter.cli import app
from tests.test_api_support import api_client, api_settings

ELF = b"\x7fELF" + bytes(range(256)) * 8


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        home=tmp_path, storage_url=str(tmp_path / "fw"), key_encryption_secret="test-kek"
    )


@pytest.fixture
def pk(engine) -> str:
    products.add_product(engine, "pk1", "Thermostat")
    return "pk1"


def row(engine, pk: str) -> Product:
    with Session(engine) as s:
        product = s.get(Product, pk)
        assert product is not None
        return product


def add(engine, settings, pk, version="2.0.0", **kw):
    return add_firmware(
        engine,
        FirmwareStore(settings),
        settings,
        src=io.BytesIO(ELF + version.encode()),
        file_name="fw.bin",
        product_key=pk,
        name="fw_" + version.replace(".", "_"),
        version=version,
        need_verify=False,
        **kw,
    )


def test_switching_on_creates_an_encrypted_key_pair_once(engine, settings, pk):
    shown = security.set_secure_update(engine, settings, pk, True)
    stored = row(engine, pk)
    assert shown["secure_update"] is True and shown["public_key"] == stored.public_key
    assert stored.public_key is not None and stored.public_key.startswith("-----BEGIN PUBLIC KEY")
    assert stored.private_key_enc is not None and "PRIVATE" not in stored.private_key_enc
    key = signing.decrypt_private_key(stored.private_key_enc, b"test-kek", pk)
    assert signing.public_pem_of(key.public_key()) == stored.public_key
    # Off keeps the pair: devices built with the public key verify again when it is back on.
    assert security.set_secure_update(engine, settings, pk, False)["secure_update"] is False
    security.set_secure_update(engine, settings, pk, True)
    assert row(engine, pk).public_key == stored.public_key
    assert security.public_key(engine, pk) == stored.public_key
    for shown in [products.product_public(row(engine, pk)), security.key_status(engine, pk)]:
        text = json.dumps(shown)
        assert "PRIVATE" not in text and stored.private_key_enc[20:60] not in text


def test_signer_signs_once_per_firmware_and_follows_the_switch(engine, settings, pk):
    fw = add(engine, settings, pk)
    signer = security.Signer(engine, settings, ttl=0)  # re-read the product on every call
    assert signer.digestsign(pk, fw) is None  # secure update off: nothing to sign
    security.set_secure_update(engine, settings, pk, True)
    sigs = {signer.digestsign(pk, fw) for _ in range(1000)}
    assert len(sigs) == 1 and signer.signed == 1
    public = signing.load_public_key(security.public_key(engine, pk))
    assert signing.verify_digestsign(public, fw.sign, sigs.pop())  # type: ignore[arg-type]
    other = add(engine, settings, pk, "3.0.0")
    assert signer.digestsign(pk, other) and signer.signed == 2
    security.set_secure_update(engine, settings, pk, False)
    assert signer.digestsign(pk, fw) is None


def test_a_cached_product_is_read_again_after_its_ttl(engine, settings, pk):
    fw = add(engine, settings, pk)
    signer = security.Signer(engine, settings, ttl=3600)
    assert signer.digestsign(pk, fw) is None
    security.set_secure_update(engine, settings, pk, True)
    assert signer.digestsign(pk, fw) is None  # within the TTL: what it read before
    signer.ttl = 0
    assert signer.digestsign(pk, fw) is not None


def test_rotation_signs_the_carrier_with_the_previous_key(engine, settings, pk):
    with pytest.raises(Conflict, match="turn secure update on"):
        security.rotate_key(engine, settings, pk)
    security.set_secure_update(engine, settings, pk, True)
    old_pem = security.public_key(engine, pk)
    with pytest.raises(InvalidInput) as err:  # no rotation under way: nothing to sign with
        add(engine, settings, pk, ext_data={"_sign_with": "previous"})
    assert err.value.field == "sign_with"

    status = security.rotate_key(engine, settings, pk)
    new_pem = security.public_key(engine, pk)
    assert security.public_key(engine, pk, previous=True) == old_pem != new_pem
    assert status["previous_key"] == signing.fingerprint(old_pem)
    assert status["key"] == signing.fingerprint(new_pem) and status["key_rotated_at"]
    with pytest.raises(Conflict, match="already rotating"):
        security.rotate_key(engine, settings, pk)

    carrier = add(engine, settings, pk, ext_data={"_sign_with": "previous", "note": "key"})
    normal = add(engine, settings, pk, "3.0.0", ext_data={"_sign_with": "current"})
    assert carrier.ext_data == {"_sign_with": "previous", "note": "key"}
    assert normal.ext_data == {}  # the default is not stored
    old, new = signing.load_public_key(old_pem), signing.load_public_key(new_pem)
    signer = security.Signer(engine, settings, ttl=0)
    signed_carrier = signer.digestsign(pk, carrier)
    signed_normal = signer.digestsign(pk, normal)
    assert signed_carrier and signed_normal
    assert signing.verify_digestsign(old, carrier.sign, signed_carrier)
    assert not signing.verify_digestsign(new, carrier.sign, signed_carrier)
    assert signing.verify_digestsign(new, normal.sign, signed_normal)
    assert not signing.verify_digestsign(old, normal.sign, signed_normal)

    # A batch of the carrier still running: retiring the old key would strand its devices.
    with session_scope(engine) as s:
        s.add(Batch(id="b1", firmware_id=carrier.id, product_key=pk, module="default",
                    target_version="2.0.0"))  # fmt: skip
    with pytest.raises(Conflict, match="b1"):
        security.retire_previous_key(engine, pk)
    assert security.retire_previous_key(engine, pk, force=True)["previous_key"] is None
    assert row(engine, pk).previous_private_key_enc is None
    with pytest.raises(Conflict, match="no previous key"):
        security.public_key(engine, pk, previous=True)
    # Retired: the carrier is signed with the current key (devices still on the old one fail).
    assert signing.verify_digestsign(new, carrier.sign, signer.digestsign(pk, carrier))  # type: ignore[arg-type]


def test_bad_ext_data_and_sign_with(engine, settings, pk):
    for ext, field in [
        ({"_sign_with": "yesterday"}, "sign_with"),
        ({"": "x"}, "ext_data"),
        ({"k": "x" * 5000}, "ext_data"),
        ({"k": object()}, "ext_data"),
    ]:
        with pytest.raises(InvalidInput) as err:
            add(engine, settings, pk, ext_data=ext)
        assert err.value.field == field
    fw = add(engine, settings, pk, ext_data={"color": "red", "n": 1})
    assert firmware_public(fw)["ext_data"] == {"color": "red", "n": 1}


def test_cli_secure_update_public_key_and_rotation(tmp_path):
    runner = CliRunner()
    env = {"OTA_HOME": str(tmp_path / "home"), "OTA_DATABASE_URL": None, "OTA_STORAGE_URL": None}

    def ota(*args: str):
        return runner.invoke(app, list(args), env=env)

    assert ota("product", "add", "pk1", "--name", "T").exit_code == 0
    missing = ota("product", "public-key", "pk1")
    assert missing.exit_code == 2 and "no signing key" in missing.output
    on = ota("product", "secure-update", "pk1", "--on", "--json")
    assert on.exit_code == 0, on.output
    shown = json.loads(on.output)
    assert shown["secure_update"] is True and "PRIVATE" not in on.output
    pem = ota("product", "public-key", "pk1")
    assert pem.exit_code == 0 and pem.output.strip() == shown["public_key"].strip()
    signing.load_public_key(pem.output)
    rotated = ota("product", "rotate-key", "pk1", "--json")
    assert rotated.exit_code == 0 and json.loads(rotated.output)["previous_key"]
    previous = ota("product", "public-key", "pk1", "--previous")
    assert previous.output.strip() == shown["public_key"].strip()
    fw = tmp_path / "carrier.bin"
    fw.write_bytes(ELF + pem.output.encode())
    added = ota("firmware", "add", str(fw), "-p", "pk1", "--name", "carrier", "--version", "2",
                "--sign-with", "previous", "--ext", "kind=key", "--json")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["ext_data"] == {"kind": "key", "_sign_with": "previous"}
    bad = ota("firmware", "add", str(fw), "-p", "pk1", "--name", "carrier", "--version", "3",
              "--sign-with", "older")  # fmt: skip
    assert bad.exit_code == 2 and "sign_with" in bad.output
    retired = ota("product", "retire-key", "pk1", "--json")
    assert retired.exit_code == 0 and json.loads(retired.output)["previous_key"] is None
    off = ota("product", "secure-update", "pk1", "--off")
    assert off.exit_code == 0 and "deactivated" in off.output
    everything = ota("product", "list", "--json").output + ota("product", "keys", "pk1").output
    assert "PRIVATE" not in everything and "fernet" not in everything


async def test_api_switch_returns_the_public_view(tmp_path, database_url):
    async with api_client(api_settings(tmp_path, database_url)) as client:
        r = await client.post("/api/v1/products", json={"product_key": "pk1", "name": "T"})
        assert r.status_code == 201
        r = await client.put("/api/v1/products/pk1/secure-update", json={"enabled": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["secure_update"] is True and body["public_key"].startswith("-----BEGIN")
        assert "PRIVATE" not in r.text and "fernet" not in r.text
        r = await client.get("/api/v1/products/pk1")
        assert r.json()["public_key"] == body["public_key"] and "fernet" not in r.text
        r = await client.put("/api/v1/products/pk1/secure-update", json={"enabled": False})
        assert r.json()["secure_update"] is False
        r = await client.put("/api/v1/products/none/secure-update", json={"enabled": True})
        assert r.status_code == 404
