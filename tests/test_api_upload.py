"""Firmware uploads stream: a 200 MB file passes through in bounded memory, checked first."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx

from ota.db.engine import make_engine
from ota.services.firmware import list_firmware
from tests.fixtures.stack import OtaProcesses, ota_processes  # noqa: F401 (a fixture)
from tests.test_api_support import (
    MULTIPART,
    api_client,
    api_settings,
    assert_problem,
    fleet,
    multipart_body,
    multipart_parts,
    upload,
)

MiB = 1024 * 1024
CHUNK = os.urandom(MiB)  # sent 200 times: the generator itself allocates nothing
BIG_CHUNKS = 200


def _big() -> Iterator[bytes]:
    return (CHUNK for _ in range(BIG_CHUNKS))


def _digests() -> tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    for chunk in _big():
        md5.update(chunk)
        sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


async def test_a_200_mb_upload_streams_to_storage_in_bounded_memory(tmp_path: Path):
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}")
    md5, sha256 = _digests()
    async with api_client(settings) as client:
        pk = await fleet(client)
        fields = {"name": "big_fw", "product_key": pk, "version": "2.0.0", "sign_method": "SHA256"}
        tracemalloc.start()
        try:
            started = time.monotonic()
            r = await upload(client, fields, "big.bin", _big())
            seconds = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert r.status_code == 201, r.text
    fw = r.json()
    assert (fw["size"], fw["md5"], fw["sha256"], fw["sign"]) == (200 * MiB, md5, sha256, sha256)
    stored = list((tmp_path / "firmware").rglob("big.bin"))
    assert [p.stat().st_size for p in stored] == [200 * MiB]
    print(f"\n200 MB upload in {seconds:.1f}s, peak traced memory {peak / MiB:.1f} MiB")
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB for a 200 MiB upload"


async def test_the_fields_are_checked_before_the_file_is_read(tmp_path: Path):
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}")
    async with api_client(settings) as client:
        pk = await fleet(client)
        sent: list[int] = []
        fields = {"name": "_bad", "product_key": pk, "version": "2.0.0"}
        r = await upload(client, fields, "big.bin", _big(), sent=sent)
        assert_problem(r, 422, "name")
        assert sum(sent) <= MiB, f"{sum(sent)} bytes of the file were read before the check"

        # A field after the file cannot have been checked before it: refused, nothing kept.
        pairs = [("name", "late_fw"), ("product_key", pk)]
        body = multipart_body(pairs, "fw.bin", [b"data"], after=[("version", "2.0.0")])
        r = await client.post("/api/v1/firmware", content=body, headers=MULTIPART)
        assert_problem(r, 422, "version")  # what was known when the file came: no version
        body = multipart_body(pairs + [("version", "2.0.0")], "fw.bin", [b"x"], after=[("a", "b")])
        r = await client.post("/api/v1/firmware", content=body, headers=MULTIPART)
        assert "last part" in assert_problem(r, 422, "file")["detail"]
        assert client.app.state.ctx.store.keys() == []  # type: ignore[attr-defined]
        assert list_firmware(client.app.state.ctx.engine) == []  # type: ignore[attr-defined]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_the_real_server_uploads_200_mb_within_bounded_rss(ota_processes: OtaProcesses):  # noqa: F811
    """`ota api` under uvicorn, over a socket: its peak RSS hardly moves for 200 MB."""
    proc = ota_processes.start("api")
    base = f"http://127.0.0.1:{ota_processes.env['OTA_HTTP_PORT']}"
    auth = {"Authorization": f"Bearer {ota_processes.env['OTA_API_TOKEN']}"}
    with httpx.Client(base_url=base, headers=auth, timeout=120) as client:
        r = client.post("/api/v1/products", json={"product_key": "pk_rss", "name": "RSS"})
        assert r.status_code == 201, r.text
        before = _peak_rss(proc.pid)
        fields = [("name", "rss_fw"), ("product_key", "pk_rss"), ("version", "2.0.0")]

        r = client.post(
            "/api/v1/firmware",
            content=multipart_parts(fields, "big.bin", _big()),
            headers=MULTIPART,
        )
        assert r.status_code == 201, r.text
        grown = _peak_rss(proc.pid) - before
    assert r.json()["size"] == 200 * MiB
    engine = make_engine(ota_processes.settings.resolved_database_url)
    assert [fw.size for fw in list_firmware(engine)] == [200 * MiB]
    engine.dispose()
    print(f"\nota api: peak RSS grew {grown / MiB:.1f} MiB for a 200 MiB upload")
    assert grown < 48 * MiB
