"""A TCP proxy that can cut every connection and refuse new ones for a while: the fault harness
puts it between the platform and the machine's PostgreSQL, which itself stays up for everyone
else. A cut is what a database restart looks like to a client: open connections die mid-query
(reset, not a polite close) and new ones are refused until it is back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self, seconds: float) -> None:
        """Reset every connection, refuse new ones for `seconds`, then listen again."""
        self.cuts += 1
        await self._stop_listening()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        await asyncio.sleep(seconds)
        await self.start()

    async def close(self) -> None:
        await self._stop_listening()
        for writer in list(self._writers):
            writer.close()

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            # wait_closed() would wait for the handlers too; the listening socket is shut now.
            self._server = None

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_w)
            return
        pair = {client_w, server_w}
        self._writers |= pair
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        except asyncio.CancelledError:  # the harness's loop is closing: nothing to report
            pass
        finally:
            self._writers -= pair
            for w in pair:
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a killed server's kernel does to its peers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
