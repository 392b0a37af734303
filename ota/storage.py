"""Firmware files: a local folder or S3 (through fsspec), written in one streaming pass.

A 1,000 MB upload is never held in memory: it is copied chunk by chunk while its MD5 and SHA256
are computed, and a rejected upload leaves no object behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

from ota.errors import InvalidInput
from ota.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
TAR_MAGIC_OFFSET = 257

# The first bytes each extension must start with ("content must match its extension").
_GZIP = (b"\x1f\x8b",)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")


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
            self.fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
            self.root = url[len("s3://") :].rstrip("/")
        else:
            self.fs = fsspec.filesystem("file")
            self.root = url.rstrip("/")
            self.fs.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put_stream(
        self, key: str, src: BinaryIO, max_bytes: int, extension: str | None = None
    ) -> StoredFile:
        """Copy `src` into the store, hashing as it goes; nothing is left behind on failure."""
        md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
        path = self.path(key)
        head = _read_head(src)
        if extension:
            check_magic(extension, head)
        try:
            with self.fs.open(path, "wb") as dst:
                chunk = head
                while chunk:
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidInput(
                            "file", f"must be at most {max_bytes // (1024 * 1024)} MB"
                        )
                    md5.update(chunk)
                    sha256.update(chunk)
                    dst.write(chunk)
                    chunk = src.read(CHUNK)
                if size == 0:
                    raise InvalidInput("file", "is empty")
        except BaseException:
            self.delete(key)
            raise
        return StoredFile(key, size, md5.hexdigest(), sha256.hexdigest())

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self.path(key), "rb")

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def delete(self, key: str) -> None:
        try:
            if self.fs.exists(self.path(key)):
                self.fs.rm(self.path(key))
        except FileNotFoundError:
            pass

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
