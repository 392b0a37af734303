"""Adding firmware: every rule of the seed, and that a rejected add leaves nothing behind."""

from __future__ import annotations

import io
import threading

import pytest
from sqlalchemy import text
from sqlmodel import Session, func, select

from ota.db.models import Firmware
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services import products
from ota.services.firmware import add_firmware, firmware_public, get_firmware, list_firmware
from ota.settings import Settings
from ota.storage import FirmwareStore
from tests.test_storage import ChunkReader, gz_bytes, pending_uploads, tar_bytes, zip_bytes

ELF = b"\x7fELF" + bytes(range(256)) * 8


class Untouchable(io.RawIOBase):
    """A source that fails the test if read: proves a rule was checked before any upload."""

    def read(self, n: int = -1) -> bytes:
        raise AssertionError("the file was read although the metadata was invalid")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, storage_url=str(tmp_path / "firmware"))


@pytest.fixture
def store(settings) -> FirmwareStore:
    return FirmwareStore(settings)


@pytest.fixture
def pk(engine) -> str:
    products.add_product(engine, "pk1", "Thermostat")
    return "pk1"


def add(engine, store, settings, **overrides) -> Firmware:
    kwargs = {
        "src": io.BytesIO(ELF),
        "file_name": "thermo-2.0.0.bin",
        "product_key": "pk1",
        "name": "thermo_fw",
        "version": "2.0.0",
    }
    kwargs.update(overrides)
    return add_firmware(engine, store, settings, **kwargs)


def firmware_count(engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Firmware)).one()


def assert_nothing_written(engine, store: FirmwareStore) -> None:
    assert firmware_count(engine) == 0
    assert store.keys() == []
    assert pending_uploads(store) == []


# --- metadata rules: checked before the file is read, on SQLite and PostgreSQL -----------------

BAD_METADATA = [
    # (overrides, field, words in the message)
    ({"name": "abc"}, "name", "4 to 32"),
    ({"name": "x" * 33}, "name", "4 to 32"),
    ({"name": "_abcd"}, "name", "underscore"),
    ({"name": "thermo-fw"}, "name", "letters, digits and underscores"),
    ({"module": "Wi-Fi"}, "module", "lowercase"),
    ({"module": "m" * 65}, "module", "1 to 64"),
    ({"version": None}, "version", "required for a full firmware"),
    ({"version": "2.0 beta"}, "version", "1 to 64"),
    ({"version": "V2"}, "version", "lowercase"),
    ({"version": "v" * 65}, "version", "1 to 64"),
    ({"type": "delta"}, "type", "full or diff"),
    ({"version": "2.0.0", "src_versions": ["1.0.0"]}, "src_versions", "only a diff"),
    ({"type": "diff", "src_versions": []}, "src_versions", "one or more"),
    ({"type": "diff", "version": None, "src_versions": ["1.0"]}, "dest_version", "required"),
    ({"type": "diff", "src_versions": ["1.0 old"]}, "src_versions", "1 to 64"),
    ({"type": "diff", "src_versions": ["2.0.0"]}, "src_versions", "target version 2.0.0"),
    (
        {"type": "diff", "src_versions": ["1.0"], "dest_version": "3.0"},
        "dest_version",
        "equal version",
    ),
    (
        {"type": "diff", "version": None, "src_versions": ["1.0"], "dest_version": "3 0"},
        "dest_version",
        "1 to 64",
    ),
    ({"sign_method": "SHA1"}, "sign_method", "MD5 or SHA256"),
    ({"description": "d" * 101}, "description", "at most 100"),
    ({"file_name": "fw.exe"}, "file", ".bin, .tar, .gz, .tar.gz, .zip or .gzip"),
    ({"file_name": "fw.tgz"}, "file", ".tar.gz"),
    ({"file_name": "firmware"}, "file", ".zip"),
    ({"file_name": ""}, "file", "file name"),
    ({"product_key": "bad key"}, "product", "1 to 64"),
]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    BAD_METADATA,
    ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_METADATA)],
)
def test_bad_metadata_is_rejected_before_upload(
    engine, store, settings, pk, overrides, field, words
):
    with pytest.raises(InvalidInput) as err:
        add(engine, store, settings, src=Untouchable(), **overrides)
    assert err.value.field == field
    assert words in err.value.message
    assert_nothing_written(engine, store)


def test_missing_product_is_rejected_before_upload(engine, store, settings):
    with pytest.raises(NotFound, match="product pk1 not found"):
        add(engine, store, settings, src=Untouchable())
    assert_nothing_written(engine, store)


def test_limit_of_firmware_files(engine, store, settings, pk):
    """The seed's 500 per account, lowered to 3 here so the test stays fast."""
    settings.max_firmware = 3
    for i in range(3):
        add(engine, store, settings, version=f"2.0.{i}")
    with pytest.raises(Conflict) as err:
        add(engine, store, settings, src=Untouchable(), version="2.0.9")
    assert "limit of 3 firmware files" in err.value.message
    assert err.value.field == "firmware"
    assert firmware_count(engine) == 3
    assert len(store.keys()) == 3


# --- accepted input -----------------------------------------------------------------------------


def test_full_firmware_record(engine, store, settings, pk):
    fw = add(engine, store, settings, module="wifi", description="d" * 100)
    data = firmware_public(get_firmware(engine, fw.id))
    assert set(data) == {
        "id", "product_key", "name", "module", "version", "type", "src_versions", "sign_method",
        "sign", "md5", "sha256", "size", "file_name", "description", "state", "created_at",
    }  # fmt: skip
    assert data["version"] == "2.0.0" and data["module"] == "wifi" and data["type"] == "full"
    assert data["size"] == len(ELF) and data["file_name"] == "thermo-2.0.0.bin"
    assert data["sign_method"] == "MD5" and data["sign"] == data["md5"]
    assert data["state"] == "unverified" and data["src_versions"] == []
    assert store.keys() == [fw.storage_key]
    assert fw.storage_key.startswith("pk1/") and fw.storage_key.endswith("/thermo-2.0.0.bin")


def test_defaults_dots_and_sign_method_case(engine, store, settings, pk):
    fw = add(engine, store, settings, module=None, version="1.2.3-rc_1", sign_method="sha256")
    assert fw.module == "default" and fw.version == "1.2.3-rc_1"
    assert fw.sign_method == "SHA256" and fw.sign == fw.sha256 != fw.md5


def test_diff_firmware_takes_its_version_from_dest_version(engine, store, settings, pk):
    fw = add(
        engine, store, settings, type="DIFF", version=None,
        src_versions=["1.0.0", "1.1.0,1.2.0", "1.0.0"], dest_version="2.0.0",
    )  # fmt: skip
    assert (fw.type, fw.version, fw.src_versions) == ("diff", "2.0.0", ["1.0.0", "1.1.0", "1.2.0"])
    same = add(engine, store, settings, type="diff", src_versions=["1.0.0"], dest_version="2.0.0")
    assert same.version == "2.0.0"


def test_no_verify_marks_it_verified(engine, store, settings, pk):
    assert add(engine, store, settings, need_verify=False).state == "verified"
    assert add(engine, store, settings, version="2.0.1").state == "unverified"


def test_the_same_firmware_twice_is_refused_before_its_upload(engine, store, settings, pk):
    """Two thermo_fw 2.0.0 would make `ota batch create thermo_fw` ambiguous."""
    first = add(engine, store, settings)
    keys = store.keys()
    with pytest.raises(Conflict) as err:
        add(engine, store, settings, file_name="again.bin", description="again")
    assert err.value.field == "name"
    assert f"pk1/default already has thermo_fw 2.0.0 as firmware {first.id}" in str(err.value)
    assert firmware_count(engine) == 1 and store.keys() == keys
    # Another version, module or product, or a diff from other sources, is another firmware.
    products.add_product(engine, "pk2", "Other")
    add(engine, store, settings, version="2.0.1")
    add(engine, store, settings, module="wifi")
    add(engine, store, settings, product_key="pk2")
    diff = {"type": "diff", "version": None, "dest_version": "2.0.0", "name": "thermo_diff"}
    add(engine, store, settings, src_versions=["1.0.0"], **diff)
    add(engine, store, settings, src_versions=["1.1.0"], **diff)
    with pytest.raises(Conflict, match="thermo_diff 2.0.0 from 1.1.0 as firmware"):
        add(engine, store, settings, src_versions=["1.1.0"], **diff)
    assert firmware_count(engine) == 6


def test_path_in_file_name_is_dropped(engine, store, settings, pk):
    fw = add(engine, store, settings, file_name="C:\\builds\\../fw.bin")
    assert fw.file_name == "fw.bin"
    assert store.keys() == [fw.storage_key] and ".." not in fw.storage_key


def test_list_and_get(engine, store, settings, pk):
    products.add_product(engine, "pk2", "Other")
    a = add(engine, store, settings)
    b = add(engine, store, settings, product_key="pk2")
    assert [f.id for f in list_firmware(engine)] == [a.id, b.id]
    assert [f.id for f in list_firmware(engine, "pk2")] == [b.id]
    with pytest.raises(NotFound):
        list_firmware(engine, "nope")
    with pytest.raises(NotFound, match="firmware 999 not found"):
        get_firmware(engine, 999)


# --- the file: on a folder and on S3 -------------------------------------------------------------


@pytest.fixture
def s_store(storage_settings) -> FirmwareStore:
    return FirmwareStore(storage_settings)


@pytest.mark.parametrize(
    ("file_name", "content"),
    [("fw.zip", zip_bytes()), ("fw.gz", gz_bytes()), ("fw.gzip", gz_bytes()),
     ("fw.tar.gz", gz_bytes()), ("fw.tar", tar_bytes()), ("FW.BIN", ELF)],
)  # fmt: skip
def test_each_extension_with_matching_content(
    sqlite_engine, storage_settings, s_store, file_name, content
):
    products.add_product(sqlite_engine, "pk1", "Thermostat")
    fw = add(sqlite_engine, s_store, storage_settings, src=io.BytesIO(content), file_name=file_name)
    assert fw.size == len(content)
    with s_store.open(fw.storage_key) as f:
        assert f.read() == content


@pytest.mark.parametrize(
    ("file_name", "content"),
    [("fw.zip", ELF), ("fw.gz", zip_bytes()), ("fw.tar.gz", tar_bytes()), ("fw.tar", gz_bytes())],
)
def test_content_not_matching_extension(
    sqlite_engine, storage_settings, s_store, file_name, content
):
    products.add_product(sqlite_engine, "pk1", "Thermostat")
    with pytest.raises(InvalidInput) as err:
        add(sqlite_engine, s_store, storage_settings, src=io.BytesIO(content), file_name=file_name)
    assert err.value.field == "file" and "does not match" in err.value.message
    assert_nothing_written(sqlite_engine, s_store)


def test_empty_file(sqlite_engine, storage_settings, s_store):
    products.add_product(sqlite_engine, "pk1", "Thermostat")
    with pytest.raises(InvalidInput, match="empty"):
        add(sqlite_engine, s_store, storage_settings, src=io.BytesIO(b""))
    assert_nothing_written(sqlite_engine, s_store)


def test_file_over_the_size_limit(sqlite_engine, storage_settings, s_store):
    """1,000 MB in the seed; lowered to 12 MiB so the test uploads two S3 parts, not a gigabyte."""
    products.add_product(sqlite_engine, "pk1", "Thermostat")
    storage_settings.max_firmware_bytes = 12 * 1024 * 1024
    with pytest.raises(InvalidInput) as err:
        add(sqlite_engine, s_store, storage_settings, src=ChunkReader(12 * 1024 * 1024 + 1))
    assert err.value.field == "file" and "at most 12 MB" in err.value.message
    assert_nothing_written(sqlite_engine, s_store)


class DeletesProductAtEnd(ChunkReader):
    """Another operator deletes the product while the file uploads: the insert must fail."""

    def __init__(self, engine, size: int) -> None:
        super().__init__(size)
        self.engine = engine

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if not data:
            with self.engine.begin() as conn:
                conn.execute(text("DELETE FROM products WHERE product_key = 'pk1'"))
        return data


def test_failed_insert_after_upload_removes_the_file(engine, storage_settings, s_store):
    products.add_product(engine, "pk1", "Thermostat")
    with pytest.raises(NotFound, match="product pk1"):
        add(engine, s_store, storage_settings, src=DeletesProductAtEnd(engine, 9 * 1024 * 1024))
    assert_nothing_written(engine, s_store)


class AddsFirmwareAtEnd(ChunkReader):
    """A concurrent add takes the last free place while this file uploads."""

    def __init__(self, rival) -> None:
        super().__init__(1024)
        self.rival = rival

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if not data and self.rival:
            self.rival, rival = None, self.rival
            rival()
        return data


def test_limit_rechecked_after_upload(engine, store, settings, pk):
    settings.max_firmware = 1
    rival = AddsFirmwareAtEnd(lambda: add(engine, store, settings, version="9.9.9"))
    with pytest.raises(Conflict, match="limit of 1"):
        add(engine, store, settings, src=rival)
    assert [f.version for f in list_firmware(engine)] == ["9.9.9"]
    assert store.keys() == [list_firmware(engine)[0].storage_key]


class WaitsAtEnd(ChunkReader):
    """Holds the end of its upload until the other upload is there too."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__(4096)
        self.barrier: threading.Barrier | None = barrier

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if not data and self.barrier:
            self.barrier, barrier = None, self.barrier
            barrier.wait(timeout=30)
        return data


def test_concurrent_adds_cannot_both_take_the_last_place(engine, store, settings, pk):
    settings.max_firmware = 1
    barrier = threading.Barrier(2)
    results: list[object] = []

    def one(version: str) -> None:
        try:
            results.append(add(engine, store, settings, src=WaitsAtEnd(barrier), version=version))
        except Conflict as exc:
            results.append(exc)

    threads = [threading.Thread(target=one, args=(v,)) for v in ("2.0.1", "2.0.2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Firmware"]
    assert firmware_count(engine) == 1
    assert len(store.keys()) == 1
