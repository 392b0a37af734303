"""Firmware downloads over real HTTP (uvicorn), from the folder store and from S3."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, event, update
from sqlmodel import col

from ota.api.access_log import redact
from ota.api.download import Unsatisfiable, parse_range
from ota.context import Context
from ota.db.engine import session_scope
from ota.db.models import Batch, Firmware, Task
from ota.push import upgrade_data
from ota.settings import Settings
from ota.urls import download_url
from starter import api as api_command
from tests.fixtures.net import free_port
from tests.fixtures.s3 import S3Server, s3_settings
from tests.linkkit.seed import Fleet, seed_fleet
from tests.linkkit.servers import api_settings, serve_api

CONTENT = os.urandom(3 * 1024 * 1024 + 17)


@dataclass
class Served:
    settings: Settings
    base: str
    fleet: Fleet

    def url(self, device: str | None = None, now: float | None = None) -> str:
        dn = device or self.fleet.names[0]
        assert self.fleet.firmware.id is not None
        return download_url(self.settings, self.fleet.firmware.id, self.fleet.product_key, dn, now)


@pytest.fixture
def served(storage_settings: Settings) -> Iterator[Served]:
    settings = api_settings(storage_settings)
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 2, content=CONTENT, store=ctx.store, task_state=None)
    with serve_api(settings) as base:
        yield Served(settings, base, fleet)
    ctx.engine.dispose()


@pytest.fixture
def served_on_db(database_url: str, tmp_path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """The folder store, on SQLite and PostgreSQL: for what the route reads from the database."""
    base = Settings(home=tmp_path, database_url=database_url, storage_url=str(tmp_path / "fw"))
    settings = api_settings(base)
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 3, content=CONTENT[:1000], store=ctx.store)
    with serve_api(settings) as base_url:
        yield Served(settings, base_url, fleet)
    ctx.engine.dispose()


def assert_refused(r: httpx.Response, status: int = 403) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body


def test_whole_file_with_content_length(served: Served):
    r = httpx.get(served.url())
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(CONTENT))
    assert "transfer-encoding" not in r.headers  # the SDKs need Content-Length, not chunks
    assert r.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(CONTENT).hexdigest()


def test_interrupted_download_resumes_with_range(served: Served):
    url, half = served.url(), len(CONTENT) // 2
    got = bytearray()
    with httpx.stream("GET", url) as r:  # leaving the block drops the connection mid-body
        for chunk in r.iter_bytes(64 * 1024):
            got += chunk
            if len(got) >= half:
                break
    assert half <= len(got) < len(CONTENT)
    r = httpx.get(url, headers={"Range": f"bytes={len(got)}-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {len(got)}-{len(CONTENT) - 1}/{len(CONTENT)}"
    assert r.headers["content-length"] == str(len(CONTENT) - len(got))
    got += r.content
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(CONTENT).hexdigest()


def test_closed_and_suffix_ranges(served: Served):
    r = httpx.get(served.url(), headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, CONTENT[10:20])
    r = httpx.get(served.url(), headers={"Range": "bytes=-5"})
    assert (r.status_code, r.content) == (206, CONTENT[-5:])


def test_range_past_the_end_is_416(served: Served):
    r = httpx.get(served.url(), headers={"Range": f"bytes={len(CONTENT)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(CONTENT)}"


def test_head_tells_the_size_without_a_body(served: Served):
    r = httpx.head(served.url())
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["content-length"] == str(len(CONTENT))
    r = httpx.head(served.url(), headers={"Range": "bytes=100-"})
    assert (r.status_code, r.headers["content-length"]) == (206, str(len(CONTENT) - 100))


def test_tampered_expired_and_borrowed_tokens_are_403(served: Served):
    good = served.url()
    bad_sig = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
    expired = served.url(now=time.time() - served.settings.url_ttl_seconds - 5)
    other = served.fleet.names[1]
    borrowed = good.replace(f"dn={served.fleet.names[0]}", f"dn={other}")  # A's token, B's name
    for url in (bad_sig, expired, borrowed, good.replace("expires=", "expires=x")):
        r = httpx.get(url)
        assert assert_refused(r)["detail"] == "invalid or expired download URL", url
    assert httpx.head(bad_sig).status_code == 403


@pytest.mark.parametrize("expires", ["\u00b2", "9" * 5000, "\uff11\uff12", " 1", "-1", ""])
def test_an_expires_that_is_not_a_plain_number_is_refused_not_a_crash(served_on_db, expires):
    # '\u00b2'.isdigit() is true but int() refuses it; int() refuses 5,000 digits too.
    url = served_on_db.url().split("&expires=")[0] + f"&expires={quote(expires)}&sig=00"
    assert_refused(httpx.get(url))


def test_a_file_name_outside_latin_1_is_sent_as_rfc_6266_says(served_on_db):
    name = 'прошивка "ü".bin'
    with session_scope(Context(served_on_db.settings).engine) as s:
        s.execute(update(Firmware).values(file_name=name))
    r = httpx.get(served_on_db.url())
    assert r.status_code == 200 and r.content == CONTENT[:1000]
    disposition = r.headers["content-disposition"]
    assert disposition == (
        f"attachment; filename=\"________ ___.bin\"; filename*=UTF-8''{quote(name, safe='')}"
    )
    assert unquote(disposition.split("UTF-8''")[1]) == name


def test_the_url_of_a_canceled_task_no_longer_downloads(served_on_db):
    """A device's URL stops working when its task for that firmware is canceled, unless
    another of its active tasks uses the same firmware; devices without tasks are not affected
    (test_push_data_points_at_a_working_url)."""
    fleet, engine = served_on_db.fleet, Context(served_on_db.settings).engine
    canceled, recanceled, pushed = fleet.names
    with session_scope(engine) as s:
        both = [canceled, recanceled]
        s.execute(update(Task).where(col(Task.device_name).in_(both)).values(state="canceled"))
        again = uuid.uuid4().hex[:12]  # a later batch of the same firmware takes one back
        s.add(Batch(id=again, firmware_id=fleet.firmware.id, product_key=fleet.product_key,
                    module="default", target_version="2.0.0"))  # fmt: skip
        s.flush()
        s.add(Task(batch_id=again, device_id=fleet.device_ids[recanceled],
                   product_key=fleet.product_key, device_name=recanceled, module="default",
                   target_version="2.0.0", state="pushed"))  # fmt: skip
    body = assert_refused(httpx.get(served_on_db.url(canceled)))
    assert "canceled" in body["detail"]
    assert httpx.head(served_on_db.url(canceled)).status_code == 403
    for dn in (recanceled, pushed):
        r = httpx.get(served_on_db.url(dn))
        assert (r.status_code, r.content) == (200, CONTENT[:1000]), dn


def test_downloads_of_a_firmware_nobody_canceled_cost_no_query_each(served_on_db):
    """The benchmark's path: what the route reads of the firmware, whether any of its tasks
    was canceled included, is cached per firmware, not looked up per device."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        for dn in served_on_db.fleet.names:
            assert httpx.get(served_on_db.url(dn)).status_code == 200
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len([s for s in statements if "tasks" in s]) == 1, statements


def test_unknown_firmware_is_404(served: Served):
    url = download_url(served.settings, 999999, served.fleet.product_key, served.fleet.names[0])
    assert httpx.get(url).status_code == 404


def test_push_data_points_at_a_working_url(served: Served):
    fleet = served.fleet
    data = upgrade_data(served.settings, fleet.firmware, fleet.product_key, fleet.names[0])
    r = httpx.get(data["url"])
    assert hashlib.md5(r.content).hexdigest() == data["sign"] == data["md5"]
    assert data["size"] == len(CONTENT)


def test_s3_direct_urls_are_presigned(s3_server: S3Server, tmp_path):
    settings = api_settings(s3_settings(s3_server, tmp_path), s3_direct_urls=True)
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=CONTENT[:1000], store=ctx.store, task_state=None)
    data = upgrade_data(settings, fleet.firmware, fleet.product_key, fleet.names[0])
    assert data["url"].startswith(s3_server.endpoint_url)
    r = httpx.get(data["url"], headers={"Range": "bytes=500-"})
    assert (r.status_code, r.content) == (206, CONTENT[500:1000])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 99)),
        ("bytes=10-", (10, 99)),
        ("bytes=10-20", (10, 20)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=20-10", None),  # invalid: ignored, the whole file
        ("bytes=0-1,5-6", None),  # several ranges: the whole file is a valid answer
        ("items=0-5", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0"])
def test_parse_range_unsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_access_log_keeps_no_signature_or_token(tmp_path, monkeypatch):
    """`ota api` under uvicorn's own logging setup: a download URL in the access log is as
    good as the download for whoever reads the log, until it expires."""
    port = free_port()
    for name, value in {"HOME": tmp_path, "HTTP_PORT": port, "API_TOKEN": "t"}.items():
        monkeypatch.setenv(f"OTA_{name}", str(value))
    access = Records()
    secret_query = "pk=p1&dn=d1&expires=9999999999&sig=0badc0ffee&token=hunter2"

    def run(app, host: str, port: int, log_config) -> None:  # type: ignore[no-untyped-def]
        # uvicorn's Config configures logging: as `ota api` asks it to (text: uvicorn's own).
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=log_config))
        logging.getLogger("uvicorn.access").addHandler(access)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            assert httpx.get(f"http://{host}:{port}/download/1?{secret_query}").status_code == 403
        finally:
            server.should_exit = True
            thread.join(10)
            logging.getLogger("uvicorn.access").removeHandler(access)

    monkeypatch.setattr(uvicorn, "run", run)
    api_command.api(verbose=False)
    (line,) = [r.getMessage() for r in access.records]
    assert "/download/1?pk=p1&dn=d1&expires=9999999999&sig=***&token=*** HTTP/1.1" in line, line
    assert "0badc0ffee" not in line and "hunter2" not in line


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/download/1?pk=a&sig=ab12", "/download/1?pk=a&sig=***"),
        ("/x?access_token=t0k&b=1", "/x?access_token=***&b=1"),
        (
            "/x?X-Amz-Signature=f00&X-Amz-Credential=k%2Fday",
            "/x?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        ("/x?design=1&sigma=2", "/x?design=1&sigma=2"),  # names that only contain "sig"
    ],
)
def test_redact(path, logged):
    assert redact(path) == logged


def test_a_store_that_cannot_be_reached_is_503_with_retry_after(s3_server: S3Server, tmp_path):
    """S3 restarting (the fault harness kills it): the route says "try again" (503, Retry-After),
    which the SDK waits out, not 500 with a traceback per request."""
    settings = api_settings(s3_settings(s3_server, tmp_path))
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=CONTENT[:1000], store=ctx.store, task_state=None)
    dead = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    with serve_api(dead):
        assert fleet.firmware.id is not None
        url = download_url(dead, fleet.firmware.id, fleet.product_key, fleet.names[0])
        r = httpx.get(url, timeout=60)
    body = assert_refused(r, 503)
    assert r.headers["retry-after"] == "5" and "try again" in body["detail"]
    ctx.engine.dispose()
