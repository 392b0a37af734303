"""Firmware files: a local folder or S3 (through fsspec), written in one streaming pass.

A 1,000 MB upload is never held in memory: it is copied chunk by chunk while its MD5 and SHA256
are computed, and a rejected upload leaves no object behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any, BinaryIO

import aiohttp
import botocore.exceptions  # type: ignore[import-untyped]
import fsspec  # type: ignore[import-untyped]

from ota.errors import InvalidInput
from ota.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
TAR_MAGIC_OFFSET = 257
# s3fs buffers a whole multipart part in memory (50 MiB by default): smaller parts keep an
# upload's memory bounded. 8 MiB is above S3's 5 MiB minimum part size.
S3_PART_BYTES = 8 * 1024 * 1024
# Downloads read S3 with short timeouts and one retry: a device retries by itself, and a request
# held for minutes (s3fs's defaults: 5 x 5 attempts of 5 s connect and 15 s read) holds a server
# thread and the device's connection for nothing. An upload keeps the patient defaults.
S3_CONNECT_SECONDS = 2
S3_READ_SECONDS = 5
S3_READ_ATTEMPTS = 2
# What a download reads from S3 at once (s3fs reads ahead 50 MiB by default: as much memory per
# download in flight, and the first byte only after those 50 MiB arrived).
S3_READ_BLOCK_BYTES = 2 * 1024 * 1024

# The first bytes each extension must start with ("content must match its extension").
_GZIP = (b"\x1f\x8b",)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")


class StorageUnavailable(Exception):
    """The store did not answer or failed (S3 down, refused, timed out, an error of its own):
    try again later. A missing file is FileNotFoundError instead."""


# What a store's reads raise when the store, not the file, is at fault. s3fs turns S3's own
# error answers into OSError; botocore and aiohttp raise their own for a dead or silent server.
_UNAVAILABLE = (OSError, botocore.exceptions.BotoCoreError, aiohttp.ClientError)


class StoreReader:
    """A file open for reading whose failures are StorageUnavailable (FileNotFoundError stays)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def seek(self, offset: int) -> None:
        with _unavailable():
            self._f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        with _unavailable():
            return self._f.read(n)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection has nothing left to release
            self._f.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _unavailable() -> Any:
    try:
        yield
    except FileNotFoundError:
        raise
    except _UNAVAILABLE as exc:
        raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    md5: str
    sha256: str


def check_magic(extension: str, head: bytes) -> None:
    """Raise InvalidInput unless the file's first bytes match its extension (.bin is free-form)."""
    if extension in (".gz", ".gzip", ".tar.gz"):
        ok = head.startswith(_GZIP)
    elif extension == ".zip":
        ok = head.startswith(_ZIP)
    elif extension == ".tar":
        ok = head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar"
    else:
        ok = True
    if not ok:
        raise InvalidInput("file", f"content does not match its extension {extension}")


def format_size(n: int) -> str:
    """1048576000 -> "1,000 MB"; sizes that are not whole megabytes are given in bytes."""
    mb = 1024 * 1024
    return f"{n // mb:,} MB" if n % mb == 0 else f"{n:,} bytes"


class FirmwareStore:
    """Where firmware files live: `root` is a folder path or s3://bucket/prefix."""

    def __init__(self, settings: Settings) -> None:
        url = settings.resolved_storage_url
        self.is_s3 = url.startswith("s3://")
        if self.is_s3:
            options: dict = {}
            if settings.s3_endpoint_url:
                options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
            if settings.s3_key:
                options["key"] = settings.s3_key
                options["secret"] = settings.s3_secret
            self._s3_options = options
            self.fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
            self.root = url[len("s3://") :].rstrip("/")
        else:
            self.fs = fsspec.filesystem("file")
            self.root = self.fs._strip_protocol(url).rstrip("/")  # absolute, no file://
            self.fs.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put_stream(
        self, key: str, src: BinaryIO, max_bytes: int, extension: str | None = None
    ) -> StoredFile:
        """Copy `src` into the store, hashing as it goes; nothing is left behind on failure."""
        md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
        head = _read_head(src)
        if extension:
            check_magic(extension, head)
        if not head:
            raise InvalidInput("file", "is empty")
        dst = self._open_for_write(key)
        try:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput("file", f"must be at most {format_size(max_bytes)}")
                md5.update(chunk)
                sha256.update(chunk)
                dst.write(chunk)
                chunk = src.read(CHUNK)
            dst.close()  # publishes the object (S3 completes the multipart upload here)
        except BaseException:
            self._abandon(dst)
            self.delete(key)
            raise
        log.info("stored %s (%d bytes)", key, size)
        return StoredFile(key, size, md5.hexdigest(), sha256.hexdigest())

    def _open_for_write(self, key: str) -> Any:
        path = self.path(key)
        if self.is_s3:
            return self.fs.open(path, "wb", block_size=S3_PART_BYTES)
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        return self.fs.open(path, "wb")

    def _abandon(self, dst: Any) -> None:
        """Close a half-written file without publishing it."""
        try:
            if self.is_s3:
                # close() would complete the multipart upload; discard() aborts it instead, and
                # marking the file closed stops its __del__ from publishing it later.
                dst.discard()
                dst.closed = True
            else:
                dst.close()
        except Exception:
            log.warning("could not abandon a partial upload cleanly", exc_info=True)

    def open(self, key: str) -> StoreReader:
        """The file for a download: raises FileNotFoundError, or StorageUnavailable quickly
        (bounded timeouts) when the store is down; so do the reader's reads."""
        with _unavailable():
            if not self.is_s3:
                return StoreReader(self.fs.open(self.path(key), "rb"))
            f = self._download_fs.open(self.path(key), "rb", block_size=S3_READ_BLOCK_BYTES)
            return StoreReader(f)

    @cached_property
    def _download_fs(self) -> Any:
        """S3 for downloads: short timeouts, one retry (S3_CONNECT_SECONDS...). Made on first
        use, so a store that only presigns or uploads never builds it."""
        config = {
            "connect_timeout": S3_CONNECT_SECONDS,
            "read_timeout": S3_READ_SECONDS,
            "retries": {"mode": "standard", "total_max_attempts": S3_READ_ATTEMPTS},
        }
        fs = fsspec.filesystem(
            "s3", skip_instance_cache=True, config_kwargs=config, **self._s3_options
        )
        fs.retries = 1  # s3fs's own retry loop (5 passes) would multiply botocore's attempts
        return fs

    def check_root(self) -> None:
        """Raise unless the store answers: FileNotFoundError for a missing bucket or folder,
        StorageUnavailable for anything else (S3 silent, credentials refused). Quick (the
        download's short timeouts): /readyz and `ota doctor` ask it."""
        if not self.is_s3:
            if not self.fs.isdir(self.root):
                raise FileNotFoundError(self.root)
            return
        with _unavailable():
            self._download_fs.info(self.root.split("/", 1)[0])  # HEAD on the bucket

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def keys(self) -> list[str]:
        """Every stored object's key, sorted: for audits of orphans, and for tests."""
        self.fs.invalidate_cache()
        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        return sorted(p[len(prefix) :] for p in found if p.startswith(prefix))

    def delete(self, key: str) -> None:
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)
        if not self.is_s3:
            self._prune_empty_dirs(path)

    def _prune_empty_dirs(self, path: str) -> None:
        """A folder store keeps one directory per upload: remove the ones left empty."""
        parent = self.fs._parent(path)
        while parent.rstrip("/") != self.root and parent.startswith(self.root + "/"):
            try:
                if self.fs.ls(parent):
                    return
                self.fs.rmdir(parent)
            except (FileNotFoundError, OSError):
                return
            parent = self.fs._parent(parent)

    def presign(self, key: str, expires_seconds: int) -> str:
        """A presigned GET URL (S3 only)."""
        return str(self.fs.sign(self.path(key), expiration=expires_seconds))


def _read_head(src: BinaryIO, n: int = 512) -> bytes:
    """Read at least `n` bytes (or to EOF) so the tar magic at offset 257 can be checked."""
    buf = io.BytesIO()
    while buf.tell() < n:
        chunk = src.read(n - buf.tell())
        if not chunk:
            break
        buf.write(chunk)
    return buf.getvalue()
