"""Firmware download for devices: resumable (Range), size and sign checked while streaming;
and the differential package's second step: patch the installed image, check the result."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bsdiff4  # type: ignore[import-untyped]
import httpx

from ota.domain import MODULE_RE, VERSION_RE
from ota.protocol import Upgrade

log = logging.getLogger(__name__)

RETRIES = 5
RETRY_DELAY = 1.0  # seconds, doubled after each failed try
# A 503 says the server is up but cannot serve the file now (its S3 store restarting): waited out
# at its Retry-After without spending the retries, for this long in all. Without it a minute of
# S3 outage failed every download in progress (-2), a failed attempt for the platform.
UNAVAILABLE_PATIENCE = 600.0
RETRY_AFTER_DEFAULT, RETRY_AFTER_MAX = 5.0, 60.0
CHUNK = 64 * 1024

Progress = Callable[[int, int], Awaitable[None]]  # (bytes received, total)
_HEX = re.compile(r"^[0-9a-f]+$")


class DownloadFailed(Exception):
    """The file could not be fetched: the device reports -2."""


class VerifyFailed(Exception):
    """Size or sign (or signature) mismatch: the device reports -3."""


def file_stem(upgrade: Upgrade) -> str:
    """The name a download (and its patched image) is kept under, made of the push's module,
    version and sign: held to the platform's rules first, since a '/' or '..' in them would
    put the file outside the download folder. VerifyFailed (-3) before anything is fetched."""
    if not (
        MODULE_RE.fullmatch(upgrade.module)
        and VERSION_RE.fullmatch(upgrade.version)
        and _HEX.fullmatch(upgrade.sign)
    ):
        raise VerifyFailed("module, version or sign breaks the platform's naming rules")
    return f"{upgrade.module}-{upgrade.version}-{upgrade.sign[:12]}"


def new_hasher(sign_method: str) -> Any:
    return hashlib.md5() if sign_method == "Md5" else hashlib.sha256()


class _Sink:
    """Where bytes go: a `.part` file (kept across restarts), memory, or nowhere; hashed
    either way."""

    def __init__(self, dest: Path | None, sign_method: str, keep: bool = False) -> None:
        self.dest, self.method = dest, sign_method
        self.hasher = new_hasher(sign_method)
        self.size = 0
        self.file: Any = io.BytesIO() if keep and dest is None else None
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # an earlier run got this far: hash what is there and go on
                with dest.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        self.hasher.update(chunk)
                        self.size += len(chunk)
            self.file = dest.open("ab")

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.size += len(chunk)
        if self.file is not None:
            self.file.write(chunk)

    def restart(self) -> None:
        """The server ignored our Range: start over."""
        self.hasher, self.size = new_hasher(self.method), 0
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()

    def close(self) -> None:
        if self.file is not None and self.dest is not None:
            self.file.close()


async def download(
    http: httpx.AsyncClient,
    upgrade: Upgrade,
    dest: Path | None,
    on_progress: Progress | None = None,
    retries: int = RETRIES,
    retry_delay: float = RETRY_DELAY,
) -> Path | None:
    """Fetch `upgrade.url` into `dest` (None: hash only), resuming with Range after a failure.

    Returns the finished file's path (None when hashing only); raises DownloadFailed or
    VerifyFailed. A `.part` file left by an interrupted run is resumed, not fetched again.
    """
    part = dest.with_name(dest.name + ".part") if dest is not None else None
    await _download(http, upgrade, part, on_progress, retries, retry_delay)
    if part is None or dest is None:
        return None
    part.replace(dest)
    return dest


async def download_bytes(
    http: httpx.AsyncClient,
    upgrade: Upgrade,
    on_progress: Progress | None = None,
    retries: int = RETRIES,
    retry_delay: float = RETRY_DELAY,
) -> bytes:
    """Like `download` into memory: a differential package a device without storage applies."""
    sink = await _download(http, upgrade, None, on_progress, retries, retry_delay, keep=True)
    return bytes(sink.file.getbuffer())


async def _download(
    http: httpx.AsyncClient,
    upgrade: Upgrade,
    part: Path | None,
    on_progress: Progress | None,
    retries: int,
    retry_delay: float,
    keep: bool = False,
) -> _Sink:
    sink = _Sink(part, upgrade.sign_method, keep)
    delay = retry_delay
    failures = 0
    waited = 0.0  # on 503s
    try:
        while sink.size < upgrade.size:
            try:
                await _fetch_once(http, upgrade, sink, on_progress)
            except _Unavailable as exc:
                if waited + exc.retry_after <= UNAVAILABLE_PATIENCE:
                    waited += exc.retry_after
                    await asyncio.sleep(exc.retry_after)
                    continue
                log.info("download of %s: server unavailable for %.0f s", upgrade.url, waited)
            except httpx.TransportError as exc:
                log.info("download of %s interrupted at %d bytes: %s", upgrade.url, sink.size, exc)
            if sink.size >= upgrade.size or failures == retries:
                break
            failures += 1
            await asyncio.sleep(delay)
            delay *= 2
    finally:
        sink.close()
    if sink.size < upgrade.size:
        raise DownloadFailed(f"got {sink.size} of {upgrade.size} bytes")
    if sink.size != upgrade.size:
        raise VerifyFailed(f"size {sink.size} is not {upgrade.size}")
    if sink.hasher.hexdigest() != upgrade.sign:
        if part is not None:
            part.unlink(missing_ok=True)  # a bad file must not be resumed next time
        raise VerifyFailed(f"{upgrade.sign_method} mismatch")
    return sink


async def _fetch_once(
    http: httpx.AsyncClient, upgrade: Upgrade, sink: _Sink, on_progress: Progress | None
) -> None:
    headers = {"Range": f"bytes={sink.size}-"} if sink.size else {}
    async with http.stream("GET", upgrade.url, headers=headers) as resp:
        if resp.status_code == 200 and sink.size:
            sink.restart()
        elif resp.status_code == 503:
            raise _Unavailable(_retry_after(resp.headers.get("retry-after")))
        elif resp.status_code >= 500:
            raise httpx.TransportError(f"HTTP {resp.status_code}")  # worth another try
        elif resp.status_code not in (200, 206):
            raise DownloadFailed(f"HTTP {resp.status_code} for {upgrade.url}")
        async for chunk in resp.aiter_bytes():  # as received: nothing buffered to lose on a cut
            sink.write(chunk)
            if sink.size > upgrade.size:
                return  # more than announced: verification fails, no use reading on
            if on_progress is not None:
                await on_progress(sink.size, upgrade.size)


class _Unavailable(httpx.TransportError):
    """HTTP 503: try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("HTTP 503")
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (an HTTP date is not worth parsing here), held to 1..60."""
    try:
        seconds = float(value) if value else RETRY_AFTER_DEFAULT
    except ValueError:
        seconds = RETRY_AFTER_DEFAULT
    return min(max(seconds, 1.0), RETRY_AFTER_MAX)


def apply_diff(source: bytes, patch: bytes, ext_data: dict[str, Any] | None) -> bytes:
    """The new image from the installed one and a BSDIFF40 package, checked against the
    target digest the server put in extData (`targetSha256`, `targetSize`): a package applied
    to another image than it was made from yields garbage, not an error."""
    try:
        image = bsdiff4.patch(source, patch)
    except Exception as exc:  # bsdiff4 raises ValueError or its C error on a bad package
        raise VerifyFailed(f"the differential package does not apply: {exc}") from None
    ext = ext_data or {}
    size, digest = ext.get("targetSize"), ext.get("targetSha256")
    if isinstance(size, int) and len(image) != size:
        raise VerifyFailed(f"patched image is {len(image)} bytes, not {size}")
    if isinstance(digest, str) and hashlib.sha256(image).hexdigest() != digest.lower():
        raise VerifyFailed("patched image does not match targetSha256")
    if digest is None:
        log.warning("a differential package without targetSha256: its result is not checked")
    return image
