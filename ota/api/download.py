"""GET/HEAD /download/{firmware_id}: signed, expiring firmware downloads with Range (resume).

The device SDKs need a Content-Length on 200 and 206 answers (no chunked encoding) and resume with
`Range: bytes=N-`. Files are streamed through the FirmwareStore, so S3 works like the folder.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlmodel import Session

from ota.context import Context
from ota.db.models import Firmware
from ota.urls import check_token

log = logging.getLogger(__name__)

router = APIRouter()
CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


# A firmware's file never changes once added, so what a download needs of its row is kept a
# little while: a large batch's devices then cost the database nothing. A deleted firmware
# stops being served within this time (its file is gone at once, which answers 404 too).
FILE_INFO_SECONDS = 10.0


class Unsatisfiable(Exception):
    pass


@dataclass(frozen=True)
class FileInfo:
    size: int
    file_name: str
    sha256: str
    storage_key: str


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
            info = fw and FileInfo(fw.size, fw.file_name, fw.sha256, fw.storage_key)
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


def _forbidden() -> JSONResponse:
    return JSONResponse({"detail": "invalid or expired download URL"}, status_code=403)


def _stream(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    try:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK, length))
            if not chunk:
                break  # the file shrank under us: the client sees a short body and retries
            length -= len(chunk)
            yield chunk
    finally:
        f.close()


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
    if not expires.isdigit() or not check_token(
        ctx.settings, firmware_id, pk, dn, int(expires), sig
    ):
        return _forbidden()
    file_info: FileInfoCache = request.app.state.file_info
    firmware = file_info.get(firmware_id)
    if firmware is None:
        return JSONResponse({"detail": "firmware not found"}, status_code=404)
    size = firmware.size
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{firmware.file_name}"',
        "ETag": f'"{firmware.sha256}"',
    }
    try:
        window = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    start, end = window if window else (0, size - 1)
    status = 206 if window else 200
    if window:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    try:
        f = ctx.store.open(firmware.storage_key)
    except FileNotFoundError:
        log.error("firmware %s: file %s is missing", firmware_id, firmware.storage_key)
        return JSONResponse({"detail": "firmware file missing"}, status_code=404)
    length = end - start + 1
    if length <= CHUNK:
        # One read, one send: streaming would hop to a thread per chunk (bench: the HTTP
        # server's CPU per device).
        with f:
            f.seek(start)
            return Response(f.read(length), status, headers)
    return StreamingResponse(_stream(f, start, length), status, headers)
