"""Firmware download for devices: resumable (Range), size and sign checked while streaming;
and the differential package's second step: patch the installed image, check the result."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bsdiff4  # type: ignore[import-untyped]
import httpx

from ota.domain import MODULE_RE, VERSION_RE
from ota.protocol import Upgrade

log = logging.getLogger(__name__)

CHUNK = 64 * 1024

Progress = Callable[[int, int], Awaitable[None]]  # (bytes received, total)
OnRetry = Callable[[str, float], None]  # (why, seconds until the next try)
_HEX = re.compile(r"^[0-9a-f]+$")
# Answers worth another try: the server or what stands behind it (S3) is down or busy.
_TRANSIENT_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class RetryPolicy:
    """How long a download keeps trying through transient failures (5xx, 408/429, connection
    errors, a truncated body): pauses from `first_delay` doubling to `max_delay` (with jitter,
    so a fleet does not come back in one burst; at least a 503's Retry-After), until
    `give_up_after` seconds pass without a byte received. Five minutes ride out an S3 or server
    outage of a minute or two; each byte received starts the count again."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    give_up_after: float = 300.0

    def next_delay(self, delay: float) -> float:
        return min(delay * 2, self.max_delay)


class _Transient(Exception):
    """This try failed in a way worth another one; `retry_after` is the server's wish."""

    def __init__(self, why: str, retry_after: float = 0.0) -> None:
        super().__init__(why)
        self.retry_after = retry_after


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
    retry: RetryPolicy = RetryPolicy(),
    on_retry: OnRetry | None = None,
) -> Path | None:
    """Fetch `upgrade.url` into `dest` (None: hash only), resuming with Range after a failure.

    Returns the finished file's path (None when hashing only); raises DownloadFailed (a 4xx, or
    transient failures for longer than `retry` allows) or VerifyFailed (the complete file does
    not match). A `.part` file left by an interrupted run is resumed, not fetched again.
    """
    part = dest.with_name(dest.name + ".part") if dest is not None else None
    await _download(http, upgrade, part, on_progress, retry, on_retry)
    if part is None or dest is None:
        return None
    part.replace(dest)
    return dest


async def download_bytes(
    http: httpx.AsyncClient,
    upgrade: Upgrade,
    on_progress: Progress | None = None,
    retry: RetryPolicy = RetryPolicy(),
    on_retry: OnRetry | None = None,
) -> bytes:
    """Like `download` into memory: a differential package a device without storage applies."""
    sink = await _download(http, upgrade, None, on_progress, retry, on_retry, keep=True)
    return bytes(sink.file.getbuffer())


async def _download(
    http: httpx.AsyncClient,
    upgrade: Upgrade,
    part: Path | None,
    on_progress: Progress | None,
    retry: RetryPolicy,
    on_retry: OnRetry | None,
    keep: bool = False,
) -> _Sink:
    sink = _Sink(part, upgrade.sign_method, keep)
    delay = retry.first_delay
    try:
        give_up_at = time.monotonic() + retry.give_up_after
        while sink.size < upgrade.size:
            before = sink.size
            try:
                await _fetch_once(http, upgrade, sink, on_progress)
                if sink.size >= upgrade.size:
                    break
                why = f"the body ended at {sink.size} of {upgrade.size} bytes"
                retry_after = 0.0
            except _Transient as exc:
                why, retry_after = str(exc), exc.retry_after
            except httpx.TransportError as exc:  # refused, reset, timed out, truncated body
                why, retry_after = f"{type(exc).__name__}: {exc}", 0.0
            if sink.size > before:  # progress: a flapping network is no reason to give up
                give_up_at, delay = time.monotonic() + retry.give_up_after, retry.first_delay
            pause = max(delay * random.uniform(0.5, 1.5), min(retry_after, retry.max_delay))
            if time.monotonic() + pause > give_up_at:
                raise DownloadFailed(
                    f"got {sink.size} of {upgrade.size} bytes; no progress for"
                    f" {retry.give_up_after:.0f} s ({why})"
                )
            where = _where(upgrade.url)
            log.info(
                "download of %s at %d bytes: %s; again in %.1f s", where, sink.size, why, pause
            )
            if on_retry is not None:
                on_retry(why, pause)
            await asyncio.sleep(pause)
            delay = retry.next_delay(delay)
    finally:
        sink.close()
    if sink.size != upgrade.size or sink.hasher.hexdigest() != upgrade.sign:
        if part is not None:
            part.unlink(missing_ok=True)  # a bad file must not be resumed next time
        if sink.size != upgrade.size:
            raise VerifyFailed(f"size {sink.size} is not {upgrade.size}")
        raise VerifyFailed(f"{upgrade.sign_method} mismatch")
    return sink


async def _fetch_once(
    http: httpx.AsyncClient, upgrade: Upgrade, sink: _Sink, on_progress: Progress | None
) -> None:
    """One request, from the bytes already there. Raises _Transient or httpx.TransportError
    for what another try may cure, DownloadFailed for what it will not (403, 404, 410...)."""
    headers = {"Range": f"bytes={sink.size}-"} if sink.size else {}
    async with http.stream("GET", upgrade.url, headers=headers) as resp:
        status = resp.status_code
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {status}", _retry_after(resp.headers.get("retry-after")))
        if status not in (200, 206):
            raise DownloadFailed(f"HTTP {status} for {_where(upgrade.url)}")
        if status == 200 and sink.size:
            sink.restart()  # the server ignored our Range: start over
        async for chunk in resp.aiter_bytes():  # as received: nothing buffered to lose on a cut
            sink.write(chunk)
            if sink.size > upgrade.size:
                return  # more than announced: verification fails, no use reading on
            if on_progress is not None:
                await on_progress(sink.size, upgrade.size)


def _where(url: str) -> str:
    """The URL without its query: a signed URL's signature downloads the file for whoever
    reads the log."""
    return str(httpx.URL(url).copy_with(query=None, fragment=None))


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (its HTTP-date form is ignored: our servers send seconds)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


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
