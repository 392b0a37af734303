"""The SDK recovers: an interrupted download resumes with Range, a lost broker is reconnected."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import httpx
import pytest

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.device.download import DownloadFailed, RetryPolicy, download
from ota.device.sdk import Device
from ota.protocol import Upgrade
from ota.push import upgrade_data
from ota.settings import Settings
from tests.linkkit.seed import seed_fleet, versions
from tests.linkkit.servers import api_settings, private_broker, serve_api
from tests.test_bridge import bridge_settings, running, until
from tests.test_device_sdk import online, watching

CONTENT = os.urandom(2 * 1024 * 1024)
QUICK = RetryPolicy(first_delay=0.01, give_up_after=5)


class CutOnce(httpx.AsyncBaseTransport):
    """Real HTTP, but the first response breaks off after `cut` bytes; records Range headers."""

    def __init__(self, cut: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.cut = cut
        self.ranges: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.ranges.append(request.headers.get("range"))
        response = await self.inner.handle_async_request(request)
        if len(self.ranges) > 1:
            return response
        cut, stream = self.cut, response.stream

        class Broken(httpx.AsyncByteStream):
            async def __aiter__(self):  # type: ignore[no-untyped-def]
                sent = 0
                async for chunk in stream:  # type: ignore[union-attr]
                    yield chunk[: cut - sent]
                    sent += len(chunk)
                    if sent >= cut:
                        raise httpx.ReadError("connection reset")

            async def aclose(self) -> None:
                await stream.aclose()  # type: ignore[union-attr]

        return httpx.Response(response.status_code, headers=response.headers, stream=Broken())


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = api_settings(Settings(home=tmp_path))
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=CONTENT, store=ctx.store, sign_method="SHA256")
    with serve_api(settings):
        data = upgrade_data(settings, fleet.firmware, fleet.product_key, fleet.names[0])
        yield protocol.parse_upgrade(protocol.encode_upgrade(data, 1))
    ctx.engine.dispose()


async def test_a_broken_download_resumes_where_it_stopped(served: Upgrade, tmp_path: Path):
    transport = CutOnce(cut=700_000)
    async with httpx.AsyncClient(transport=transport) as http:
        path = await download(http, served, tmp_path / "fw.bin", retry=QUICK)
    assert path is not None and path.read_bytes() == CONTENT
    assert transport.ranges == [None, "bytes=700000-"]


async def test_a_part_file_from_an_earlier_run_is_resumed(served: Upgrade, tmp_path: Path):
    (tmp_path / "fw.bin.part").write_bytes(CONTENT[:1_000_000])
    transport = CutOnce(cut=10**9)
    async with httpx.AsyncClient(transport=transport) as http:
        path = await download(http, served, tmp_path / "fw.bin")
    assert path is not None and hashlib.sha256(path.read_bytes()).hexdigest() == served.sign
    assert transport.ranges == ["bytes=1000000-"]


async def test_hash_only_resume_keeps_the_hash_going(served: Upgrade):
    transport = CutOnce(cut=123_457)
    async with httpx.AsyncClient(transport=transport) as http:
        assert await download(http, served, None, retry=QUICK) is None  # verified
    assert transport.ranges == [None, "bytes=123457-"]


async def test_giving_up_is_a_download_failure(served: Upgrade, tmp_path: Path):
    dead = Upgrade(**{**served.__dict__, "url": "http://127.0.0.1:9/download/1"})
    async with httpx.AsyncClient() as http:
        with pytest.raises(DownloadFailed):
            await download(http, dead, tmp_path / "fw.bin", retry=RetryPolicy(0.01, 0.05, 0.3))


async def test_device_and_bridge_come_back_after_the_broker_restarts(tmp_path: Path):
    with private_broker(tmp_path) as broker:
        settings = bridge_settings(tmp_path, broker.url)
        engine = Context(settings).engine
        fleet = seed_fleet(engine, 1, task_state=None)
        pk, dn = fleet.product_key, fleet.names[0]
        bridge = Bridge(settings, engine, None, session_expiry=60, products=[pk])
        device = Device(pk, dn, mqtt_url=broker.url, versions="1.0.0")
        async with running(bridge), online(device):
            broker.stop()
            await until(lambda: not device.connected.is_set() and not bridge.ready.is_set())
            broker.start()
            await asyncio.wait_for(device.connected.wait(), 20)
            await asyncio.wait_for(bridge.ready.wait(), 20)
            device.versions["default"] = "1.0.1"
            await device.report_version()
            await until(lambda: versions(engine, pk) == {dn: "1.0.1"})
        assert device.stats["connects"] == 2 and bridge.stats["reconnects"] >= 1


async def test_a_vanished_device_is_offline_at_once(sqlite_engine, mqtt_url: str, tmp_path: Path):
    fleet = seed_fleet(sqlite_engine, 1, task_state=None)
    pk, dn = fleet.product_key, fleet.names[0]
    device = Device(pk, dn, mqtt_url=mqtt_url, versions="1.0.0")
    async with watching(mqtt_url, protocol.status_topic(pk, dn)) as status, online(device):
        await until(lambda: status == [b"online"])
        # The TCP connection dies without a DISCONNECT: the broker publishes the last will.
        device._client._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        await until(lambda: b"offline" in status, what="the last will")
        await until(lambda: status[-1:] == [b"online"] and device.stats["connects"] == 2)
    await until(lambda: status[-1:] == [b"offline"], what="offline on a clean exit")
