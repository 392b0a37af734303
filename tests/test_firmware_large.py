"""A 1,000 MB firmware file (the seed's maximum) is streamed with bounded memory, to disk and S3."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Callable

from ota.services import products
from ota.services.firmware import add_firmware, delete_firmware
from ota.settings import Settings
from ota.storage import FirmwareStore
from tests.fixtures.s3 import s3_settings
from tests.test_storage import MB, ChunkReader

LIMIT = 1000 * MB  # the default max_firmware_bytes: these files sit exactly on the limit
MEMORY_BUDGET = 64 * MB


def traced_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """Run fn and return its result with the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def hashes_of_file(path) -> tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MB):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def same_content(a, b) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(4 * MB)
            if chunk != fb.read(4 * MB):
                return False
            if not chunk:
                return True


def test_1000_mb_file_to_folder(sqlite_engine, tmp_path):
    settings = Settings(home=tmp_path, storage_url=str(tmp_path / "firmware"))
    assert settings.max_firmware_bytes == LIMIT
    store = FirmwareStore(settings)
    products.add_product(sqlite_engine, "pk1", "Thermostat")
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:  # sparse, with markers so a lost or repeated chunk shows
        f.truncate(LIMIT)
        for offset in (0, LIMIT // 2 + 12345, LIMIT - 64):
            f.seek(offset)
            f.write(os.urandom(64))
    try:
        with open(source, "rb") as src:
            fw, peak = traced_peak(
                lambda: add_firmware(
                    sqlite_engine, store, settings, src=src, file_name="big.bin",
                    product_key="pk1", name="big_fw", version="1.0.0",
                )
            )  # fmt: skip
        assert peak < MEMORY_BUDGET, f"peak {peak / MB:.1f} MB"
        assert fw.size == LIMIT == store.size(fw.storage_key)
        assert (fw.md5, fw.sha256) == hashes_of_file(source)
        assert same_content(source, store.path(fw.storage_key))
    finally:
        source.unlink()
    delete_firmware(sqlite_engine, store, fw.id)  # a gigabyte less under pytest's kept tmp dirs
    assert store.keys() == []


def test_1000_mb_stream_to_s3(sqlite_engine, s3_server, tmp_path):
    """Generated while read: neither the source nor the upload ever holds the whole file."""
    settings = s3_settings(s3_server, tmp_path)
    store = FirmwareStore(settings)
    products.add_product(sqlite_engine, "pk1", "Thermostat")
    fw, peak = traced_peak(
        lambda: add_firmware(
            sqlite_engine, store, settings, src=ChunkReader(LIMIT, seed=7), file_name="big.bin",
            product_key="pk1", name="big_fw", version="1.0.0", sign_method="SHA256",
        )
    )  # fmt: skip
    assert peak < MEMORY_BUDGET, f"peak {peak / MB:.1f} MB"
    assert fw.size == LIMIT == store.size(fw.storage_key)
    assert (fw.md5, fw.sha256) == ChunkReader(LIMIT, seed=7).hashes()
    assert fw.sign == fw.sha256
    delete_firmware(sqlite_engine, store, fw.id)
    assert store.keys() == []
