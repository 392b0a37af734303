"""Helpers for the API tests: an in-process client, a streamed multipart body, a small fleet."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from ota.api.app import create_app
from ota.settings import Settings

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOUNDARY = "otatestboundary7MA4YWxkTrZu0gW"


def api_settings(
    tmp_path: Path, database_url: str, temporal_address: str | None = None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "storage_url": str(tmp_path / "firmware"),
        "api_token": TOKEN,
        "task_queue": f"api-{uuid.uuid4().hex[:8]}",  # no worker: started workflows just wait
        "broker_auth": "none",  # registration without a broker (tests/test_device_identity.py)
    }
    if temporal_address:
        values["temporal_address"] = temporal_address
    return Settings(**(values | overrides))


@asynccontextmanager
async def api_client(
    settings: Settings, auth: bool = True, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    headers = AUTH if auth else {}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ota.test", headers=headers, timeout=120
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        app.state.ctx.engine.dispose()


def _field(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    ).encode()


def multipart_parts(
    fields: Iterable[tuple[str, str]],
    file_name: str | None,
    chunks: Iterable[bytes],
    after: Iterable[tuple[str, str]] = (),
    sent: list[int] | None = None,
) -> Iterator[bytes]:
    """A multipart/form-data body, piece by piece; `sent` counts the file bytes taken."""
    for name, value in fields:
        yield _field(name, value)
    if file_name is not None:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{file_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for chunk in chunks:
            if sent is not None:
                sent.append(len(chunk))
            yield chunk
        yield b"\r\n"
    for name, value in after:
        yield _field(name, value)
    yield f"--{BOUNDARY}--\r\n".encode()


async def multipart_body(*args: Any, **kw: Any) -> AsyncIterator[bytes]:
    """The same, for the in-process (ASGI) client, which takes the body only as it is read."""
    for part in multipart_parts(*args, **kw):
        yield part


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def upload(
    client: httpx.AsyncClient,
    fields: dict[str, str | list[str]],
    file_name: str | None = "fw.bin",
    content: bytes | Iterable[bytes] = b"\x7fELF firmware image",
    **kw: Any,
) -> httpx.Response:
    pairs = [(k, item) for k, v in fields.items() for item in ([v] if isinstance(v, str) else v)]
    chunks = [content] if isinstance(content, bytes) else content
    body = multipart_body(pairs, file_name, chunks, **kw)
    return await client.post("/api/v1/firmware", content=body, headers=MULTIPART)


async def fleet(client: httpx.AsyncClient, pk: str = "pk1", versions: Iterable[str] = ()) -> str:
    """A product with one device per given version, named dev-0000, dev-0001, ..."""
    r = await client.post("/api/v1/products", json={"product_key": pk, "name": "Thermostat"})
    assert r.status_code == 201, r.text
    for i, version in enumerate(versions):
        body = {"DeviceName": f"dev-{i:04d}", "version": version}
        r = await client.post(f"/api/v1/products/{pk}/devices", json=body)
        assert r.status_code == 201, r.text
    return pk


async def firmware(
    client: httpx.AsyncClient, pk: str, version: str = "2.0.0", verified: bool = True, **kw: Any
) -> dict[str, Any]:
    fields = {"name": f"fw_{version.replace('.', '_')}", "product_key": pk, "version": version}
    if verified:
        fields["need_verify"] = "false"
    r = await upload(client, fields | kw)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    if field is not None:
        assert body.get("field") == field, body
    return body  # type: ignore[no-any-return]
