"""multipart/form-data read as a stream: fields first, then the file, never whole in memory.

The metadata fields are parsed and can be checked before the first byte of the file is read;
the file part is then handed out chunk by chunk, as the network delivers it, to a blocking
reader in a worker thread (FirmwareStore.put_stream hashes and writes as it reads).
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import AsyncIterator

import anyio.from_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ota.errors import InvalidInput

FIELD_MAX = 64 * 1024  # a metadata field; the description allows 100 characters
FIELDS_MAX = 64


class MultipartStream:
    """Pull-parses one request body; `fields` fills up until `next_file` reaches the file part."""

    def __init__(self, request: Request) -> None:
        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise InvalidInput("file", "send the firmware as multipart/form-data")
        self._body: AsyncIterator[bytes] = request.stream().__aiter__()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        self.fields: dict[str, list[str]] = {}
        self.file_field: str | None = None
        self.file_name: str | None = None
        self._header: list[bytes] = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._value = bytearray()
        self._in_file = False
        self._file_done = False
        self._file_data: deque[bytes] = deque()  # at most one network chunk's worth
        self._ended = False

    # --- parser callbacks ------------------------------------------------------------------

    def _part_begin(self) -> None:
        if self._file_done:
            raise InvalidInput("file", "must be the last part of the form")
        self._headers, self._value = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header[0].strip().lower()] = self._header[1].strip()
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            if sum(len(v) for v in self.fields.values()) >= FIELDS_MAX:
                raise InvalidInput("body", f"at most {FIELDS_MAX} form fields")
            return
        if self.file_field is not None:
            raise InvalidInput("file", "send one file")
        self._in_file = True
        self.file_field = self._name
        self.file_name = filename.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_data.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > FIELD_MAX:
            raise InvalidInput(self._name or "body", "is too long")

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file, self._file_done = False, True
        else:
            value = self._value.decode("utf-8", "replace")
            self.fields.setdefault(self._name, []).append(value)

    def _end(self) -> None:
        self._ended = True

    # --- pulling ---------------------------------------------------------------------------

    async def _feed(self) -> bool:
        """Parse the next network chunk; False at the end of the body."""
        try:
            chunk = await self._body.__anext__()
        except StopAsyncIteration:
            return False
        except ClientDisconnect:
            raise InvalidInput("file", "the upload was interrupted") from None
        if chunk:
            try:
                self._parser.write(chunk)
            except MultipartParseError:
                raise InvalidInput("file", "the multipart/form-data body is malformed") from None
        return True

    async def next_file(self) -> str | None:
        """Read fields up to the file part's headers; its file name, or None if there is none."""
        while self.file_field is None and not self._ended:
            if not await self._feed():
                break
        return self.file_name

    async def read_chunk(self) -> bytes:
        """The file's next bytes; b"" once it is complete and nothing but the end follows."""
        while not self._file_data:
            if self._file_done:
                await self._drain()
                return b""
            if not await self._feed():
                raise InvalidInput("file", "the upload ended before the file did")
        return self._file_data.popleft()

    async def _drain(self) -> None:
        # What follows the file must be the closing boundary; another part raises.
        while not self._ended and await self._feed():
            pass

    def fields_flat(self) -> dict[str, str | list[str]]:
        """Each field once; repeated ones (src_versions) as a list."""
        return {k: v[0] if len(v) == 1 else v for k, v in self.fields.items()}


class ThreadReader(io.RawIOBase):
    """A blocking file object over `MultipartStream.read_chunk`, for code in a worker thread."""

    def __init__(self, stream: MultipartStream) -> None:
        self._stream = stream
        self._pending = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = anyio.from_thread.run(self._stream.read_chunk)
        if size is None or size < 0:
            size = len(self._pending)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out
