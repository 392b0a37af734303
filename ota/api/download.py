"""GET/HEAD /download/{firmware_id}: signed, expiring firmware downloads with Range (resume).

The device SDKs need a Content-Length on 200 and 206 answers (no chunked encoding) and resume with
`Range: bytes=N-`. Files are streamed through the FirmwareStore, so S3 works like the folder.

A store that is down (S3 unreachable, timing out, failing) is a 503 with Retry-After, which the
devices retry, never a 404 or 500; a download whose store fails mid-body is broken off before its
Content-Length, so the device sees it truncated and resumes with Range (storage_outage.py).

Each request is counted once by outcome (ota_download_requests): full, range, refused, error; a
streamed answer when its body ends, so one the store breaks off counts as an error. Bytes are
counted as the server takes each chunk (ota_download_bytes).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import Counter
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ota.api.problems import problem_response
from ota.api.storage_outage import RETRY_AFTER_SECONDS, StorageOutage
from ota.context import Context
from ota.db.models import Batch, Device, Firmware, Task
from ota.domain import ACTIVE_TASK_STATES, TaskState
from ota.metrics import DOWNLOAD_BYTES, DOWNLOADS
from ota.storage import StorageUnavailable, StoreReader
from ota.urls import check_token

log = logging.getLogger(__name__)

router = APIRouter()
CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Unix seconds (10 digits until 2286), ASCII only: str.isdigit() takes '\u00b2', which int()
# refuses, and int() of thousands of digits raises too; either was a 500.
_EXPIRES = re.compile(r"[0-9]{1,12}")
_ACTIVE = {s.value for s in ACTIVE_TASK_STATES}
# Bound once: a request costs an add, not a label lookup; every outcome is exported from 0.
FULL, RANGE, REFUSED, ERROR = (DOWNLOADS.labels(o) for o in ("full", "range", "refused", "error"))


# A firmware's file never changes once added, so what a download needs of its row is kept a
# little while: a large batch's devices then cost the database nothing. A deleted firmware
# stops being served within this time (its file is gone at once, which answers 404 too), and
# the first canceled task of a firmware reaches its downloads within this time.
FILE_INFO_SECONDS = 10.0


class Unsatisfiable(Exception):
    pass


@dataclass(frozen=True)
class FileInfo:
    size: int
    file_name: str
    sha256: str
    storage_key: str
    # Some task of this firmware was canceled: only then is each download's device looked up
    # (`canceled`), so the downloads of a batch nobody canceled cost no query per request.
    canceled_tasks: bool = False


class FileInfoCache:
    """One per HTTP server (app.state.file_info). The database is opened on first use."""

    def __init__(self, ctx: Context, ttl: float = FILE_INFO_SECONDS) -> None:
        self.ctx = ctx
        self.ttl = ttl
        self._entries: dict[int, tuple[float, FileInfo | None]] = {}

    def get(self, firmware_id: int) -> FileInfo | None:
        now = time.monotonic()
        hit = self._entries.get(firmware_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with Session(self.ctx.engine) as session:
            fw = session.get(Firmware, firmware_id)
            info = None
            if fw is not None:
                canceled_tasks = _any_canceled(session, fw.id)
                info = FileInfo(fw.size, fw.file_name, fw.sha256, fw.storage_key, canceled_tasks)
        if len(self._entries) > 1000:  # ids are few; this only bounds a scan of bad ids
            self._entries.clear()
        self._entries[firmware_id] = (now, info)
        return info


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte, inclusive, for one range; None to send the whole file (RFC 9110).

    Raises Unsatisfiable when the range starts past the end. Several ranges or a malformed
    header are ignored: a 200 with the whole file is a valid answer to those.
    """
    match = _RANGE.match((header or "").strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # bytes=-N: the last N bytes
        n = int(last)
        if n == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, end


def _any_canceled(session: Session, firmware_id: int | None) -> bool:
    """Whether a task of this firmware was canceled (tasks by batch and state: indexed)."""
    query = (
        select(Task.id)
        .join(Batch, col(Batch.id) == col(Task.batch_id))
        .where(Batch.firmware_id == firmware_id, Task.state == TaskState.CANCELED.value)
        .limit(1)
    )
    return session.exec(query).first() is not None


def canceled(engine: Engine, firmware_id: int, product_key: str, device_name: str) -> bool:
    """True when the device's task for this firmware was canceled and none of its active
    tasks uses the firmware: the URL its push carried must stop working. One indexed query
    (devices by name, tasks by device and state) per request, before the first byte, never
    per chunk, and only for a firmware with canceled tasks (FileInfo.canceled_tasks);
    devices without tasks (a URL made by hand) are not concerned."""
    query = (
        select(Task.state)
        .join(Device, col(Device.id) == col(Task.device_id))
        .join(Batch, col(Batch.id) == col(Task.batch_id))
        .where(
            Device.product_key == product_key,
            Device.name == device_name,
            col(Task.state).in_([TaskState.CANCELED.value, *_ACTIVE]),
            Batch.firmware_id == firmware_id,
        )
    )
    with Session(engine) as session:
        states = {str(state) for state in session.exec(query)}
    return TaskState.CANCELED.value in states and states.isdisjoint(_ACTIVE)


def content_disposition(file_name: str) -> str:
    """RFC 6266: the exact name in `filename*` (UTF-8, RFC 8187), and an ASCII `filename` for
    clients without it. Header values are Latin-1: a name outside it failed every download."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in file_name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _refused(status: int, detail: str) -> Response:
    REFUSED.inc()
    title = "Forbidden" if status == 403 else "Not found"
    return problem_response(status, title, detail)


def _forbidden() -> Response:
    return _refused(403, "invalid or expired download URL")


def _unavailable() -> Response:
    ERROR.inc()
    detail = "firmware storage is unavailable; try again later"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return problem_response(503, "Service unavailable", detail, headers=headers)


def _stream(
    f: StoreReader, first: bytes, length: int, outage: StorageOutage, status: int
) -> Iterator[bytes]:
    """`first` was read before the answer's status went out; the rest follows. A store that
    fails now raises out of here: the server then closes the connection short of Content-Length
    (uvicorn's traceback for it is dropped: QuietBrokenDownloads), which the client sees as a
    truncated body, never as a complete short file. A chunk's bytes count once the server asks
    for the next: it has taken this one (a client gone away counts what it was sent)."""
    outcome = _answered(status)
    try:
        yield first
        DOWNLOAD_BYTES.inc(len(first))
        length -= len(first)
        while length > 0:
            try:
                chunk = f.read(min(CHUNK, length))
            except StorageUnavailable as exc:
                outage.failed(str(exc))
                outcome = ERROR
                raise
            if not chunk:
                break  # the file shrank under us: the client sees a short body and retries
            length -= len(chunk)
            yield chunk
            DOWNLOAD_BYTES.inc(len(chunk))
    finally:
        outcome.inc()
        f.close()


def _answered(status: int) -> Counter:
    return RANGE if status == 206 else FULL


@router.api_route("/download/{firmware_id}", methods=["GET", "HEAD"], include_in_schema=False)
def download(
    firmware_id: int,
    request: Request,
    pk: str = "",
    dn: str = "",
    expires: str = "",
    sig: str = "",
) -> Response:
    ctx: Context = request.app.state.ctx
    if not _EXPIRES.fullmatch(expires) or not check_token(
        ctx.settings, firmware_id, pk, dn, int(expires), sig
    ):
        return _forbidden()
    file_info: FileInfoCache = request.app.state.file_info
    firmware = file_info.get(firmware_id)
    if firmware is None:
        return _refused(404, "firmware not found")
    if firmware.canceled_tasks and canceled(ctx.engine, firmware_id, pk, dn):
        return _refused(403, "the update this URL was issued for was canceled")
    size = firmware.size
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition(firmware.file_name),
        "ETag": f'"{firmware.sha256}"',
    }
    try:
        window = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        REFUSED.inc()
        headers["Content-Range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    start, end = window if window else (0, size - 1)
    status = 206 if window else 200
    if window:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD":
        _answered(status).inc()
        return Response(status_code=status, headers=headers)
    outage: StorageOutage = request.app.state.storage_outage
    if outage.refuse_now():
        return _unavailable()
    length = end - start + 1
    try:
        f = ctx.store.open(firmware.storage_key)
    except FileNotFoundError:
        log.error("firmware %s: file %s is missing", firmware_id, firmware.storage_key)
        ERROR.inc()  # the firmware exists, its file does not: the store is at fault
        return problem_response(404, "Not found", "firmware file missing")
    except StorageUnavailable as exc:
        outage.failed(str(exc))
        return _unavailable()
    try:
        # The first chunk before the status: a store that fails here is a 503, not a 200 cut
        # short. A small answer is this one read and one send (streaming would hop to a thread
        # per chunk: bench, the HTTP server's CPU per device).
        f.seek(start)
        first = f.read(min(CHUNK, length))
    except StorageUnavailable as exc:
        f.close()
        outage.failed(str(exc))
        return _unavailable()
    outage.ok()
    if len(first) >= length:
        f.close()
        _answered(status).inc()
        DOWNLOAD_BYTES.inc(len(first))
        return Response(first, status, headers)
    return StreamingResponse(_stream(f, first, length, outage, status), status, headers)
