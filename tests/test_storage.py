"""FirmwareStore on a folder and on a real S3 server: streaming, hashes, and nothing left behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile

import pytest

from ota.errors import InvalidInput
from ota.settings import Settings
from ota.storage import FirmwareStore, check_magic, format_size

MB = 1024 * 1024


# --- firmware content, shared with the other firmware tests -----------------------------------


class ChunkReader:
    """`size` bytes of reproducible, non-repeating content, generated as it is read.

    A stand-in for an upload too big to hold in memory: nothing but the current chunk exists.
    """

    def __init__(self, size: int, seed: int = 0, head: bytes = b"") -> None:
        self.size, self.seed, self.head = size, seed, head
        self.served = 0
        self._pending = b""

    def _block(self, index: int) -> bytes:
        # 1 MiB: a cheap pattern that differs per block, so a dropped or repeated chunk shows.
        return hashlib.sha256(f"{self.seed}:{index}".encode()).digest() * (MB // 32)

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.served if n is None or n < 0 else min(n, self.size - self.served)
        out = bytearray()
        while len(out) < n:
            if not self._pending:
                index = (self.served + len(out)) // MB
                block = self._block(index)
                if index == 0 and self.head:
                    block = self.head + block[len(self.head) :]
                self._pending = block
            take = self._pending[: n - len(out)]
            self._pending = self._pending[len(take) :]
            out += take
        self.served += len(out)
        return bytes(out)

    def hashes(self) -> tuple[str, str]:
        """MD5 and SHA256 of the whole content, from a fresh reader with hashlib."""
        again = ChunkReader(self.size, self.seed, self.head)
        md5, sha256 = hashlib.md5(), hashlib.sha256()
        while chunk := again.read(MB):
            md5.update(chunk)
            sha256.update(chunk)
        return md5.hexdigest(), sha256.hexdigest()

    def sha256(self) -> str:
        return self.hashes()[1]


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("firmware.bin", b"\x7fELF" + b"\0" * 100)
    return buf.getvalue()


def gz_bytes() -> bytes:
    return gzip.compress(b"firmware image" * 100)


def tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = b"firmware image"
        info = tarfile.TarInfo("firmware.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


# --- the store ----------------------------------------------------------------------------------


def pending_uploads(store: FirmwareStore) -> list:
    """S3 multipart uploads begun and never completed nor aborted (they cost storage)."""
    if not store.is_s3:
        return []
    bucket, _, prefix = store.root.partition("/")
    found = store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
    return found.get("Uploads", [])


def assert_empty(store: FirmwareStore) -> None:
    assert store.keys() == []
    assert pending_uploads(store) == []


def test_put_stream_hashes_and_reads_back(storage_settings):
    store = FirmwareStore(storage_settings)
    data = b"firmware" * 100_000
    stored = store.put_stream(
        "pk/abc/fw.bin", io.BytesIO(data), max_bytes=10 * MB, extension=".bin"
    )
    assert stored.size == len(data)
    assert stored.md5 == hashlib.md5(data).hexdigest()
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.keys() == ["pk/abc/fw.bin"]
    assert store.size("pk/abc/fw.bin") == len(data)
    with store.open("pk/abc/fw.bin") as f:
        assert f.read() == data
    store.delete("pk/abc/fw.bin")
    assert_empty(store)
    assert not store.exists("pk/abc/fw.bin")


def test_multipart_upload_completes(storage_settings):
    """Bigger than one S3 part, so the multipart path (not a one-shot PUT) is exercised."""
    store = FirmwareStore(storage_settings)
    stored = store.put_stream("pk/x/big.bin", ChunkReader(20 * MB, seed=3), max_bytes=30 * MB)
    assert stored.size == 20 * MB
    assert stored.sha256 == ChunkReader(20 * MB, seed=3).sha256()
    assert store.keys() == ["pk/x/big.bin"]
    assert pending_uploads(store) == []


def test_over_limit_leaves_nothing(storage_settings):
    store = FirmwareStore(storage_settings)
    with pytest.raises(InvalidInput) as err:
        store.put_stream("pk/x/big.bin", ChunkReader(20 * MB + 1, seed=1), max_bytes=20 * MB)
    assert err.value.field == "file"
    assert "at most 20 MB" in err.value.message
    assert_empty(store)


def test_exactly_at_limit_is_accepted(storage_settings):
    store = FirmwareStore(storage_settings)
    stored = store.put_stream("pk/x/edge.bin", io.BytesIO(b"x" * 1000), max_bytes=1000)
    assert stored.size == 1000


class BrokenReader(ChunkReader):
    """A client that disconnects halfway through the upload."""

    def read(self, n: int = -1) -> bytes:
        if self.served > 12 * MB:
            raise ConnectionResetError("client went away")
        return super().read(n)


def test_failed_source_leaves_nothing(storage_settings):
    store = FirmwareStore(storage_settings)
    with pytest.raises(ConnectionResetError):
        store.put_stream("pk/x/cut.bin", BrokenReader(40 * MB, seed=2), max_bytes=100 * MB)
    assert_empty(store)


@pytest.mark.parametrize(
    ("ext", "good"),
    [
        (".zip", zip_bytes()),
        (".gz", gz_bytes()),
        (".gzip", gz_bytes()),
        (".tar.gz", gz_bytes()),
        (".tar", tar_bytes()),
    ],
)
def test_content_must_match_extension(tmp_path, ext, good):
    store = FirmwareStore(Settings(home=tmp_path))
    stored = store.put_stream(f"pk/ok/fw{ext}", io.BytesIO(good), max_bytes=MB, extension=ext)
    assert stored.size == len(good)
    store.delete(stored.key)
    with pytest.raises(InvalidInput) as err:
        store.put_stream(f"pk/bad/fw{ext}", io.BytesIO(b"\0" * 600), max_bytes=MB, extension=ext)
    assert err.value.field == "file"
    assert ext in err.value.message
    assert store.keys() == []


def test_bin_accepts_any_content():
    check_magic(".bin", b"")
    check_magic(".bin", zip_bytes())


def test_empty_file_is_rejected(storage_settings):
    store = FirmwareStore(storage_settings)
    with pytest.raises(InvalidInput, match="empty"):
        store.put_stream("pk/x/e.bin", io.BytesIO(b""), max_bytes=MB)
    assert_empty(store)


def test_format_size():
    assert format_size(1000 * MB) == "1,000 MB"
    assert format_size(1001) == "1,001 bytes"
