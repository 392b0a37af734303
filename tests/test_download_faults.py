"""Downloads through faults (issue 17): S3 down or hung behind the download route, a device's
connection cut mid-body. Real parts: a weed mini of the test's own that is killed and started
again, the API under uvicorn, Mosquitto, the bridge, the SDK; a TCP proxy plays the network."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.device.download import DownloadFailed, RetryPolicy, download
from ota.device.sdk import Device
from ota.protocol import Upgrade
from ota.push import upgrade_data
from ota.settings import Settings
from ota.urls import download_url
from tests.fixtures.net import free_port
from tests.fixtures.s3 import OwnS3, s3_settings
from tests.fixtures.tcp_proxy import CuttingProxy
from tests.linkkit.seed import Fleet, seed_fleet, tasks
from tests.linkkit.servers import api_settings, serve_api
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until
from tests.test_device_sdk import online, watching

# Larger than the route's S3 read-ahead (2 MiB): an outage reaches a download in flight.
CONTENT = os.urandom(12 * 1024 * 1024)
# The API reads S3 ahead of a paused device by what the sockets buffer (~10 MiB on loopback):
# a device's download must be longer than that for S3's death to reach it.
LONG_CONTENT = os.urandom(40 * 1024 * 1024)
QUICK = RetryPolicy(first_delay=0.5, max_delay=3, give_up_after=60)
OUTAGE_SECONDS = 12


class Records(logging.Handler):
    def __init__(self, *names: str) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.names = names

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    @contextlib.contextmanager
    def attached(self) -> Iterator[Records]:
        loggers = [logging.getLogger(n) for n in self.names]
        for logger in loggers:
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


def outage_log() -> Records:
    """The route's outage lines, and uvicorn's error log (a traceback per broken request)."""
    return Records("ota.api.storage_outage", "uvicorn.error")


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    fleet: Fleet
    recorder: Recorder
    proxy: CuttingProxy

    def upgrade(self) -> Upgrade:
        f = self.fleet
        data = upgrade_data(self.settings, f.firmware, f.product_key, f.names[0])
        upgrade = protocol.parse_upgrade(protocol.encode_upgrade(data, 1))
        assert isinstance(upgrade, Upgrade)
        return upgrade

    async def push(self) -> None:
        f = self.fleet
        data = upgrade_data(self.settings, f.firmware, f.product_key, f.names[0])
        async with publisher(self.settings.mqtt_url) as client:
            topic = protocol.upgrade_topic(f.product_key, f.names[0])
            await client.publish(topic, protocol.encode_upgrade(data, 1), qos=1)


@contextlib.asynccontextmanager
async def platform(
    tmp_path: Path,
    mqtt_url: str,
    store: Settings | None = None,
    cuts: dict[int, int] | None = None,
    content: bytes = CONTENT,
) -> AsyncIterator[Platform]:
    """Bridge (signals recorded), API, and a proxy in front of the API that the push URLs name."""
    proxy_port = free_port()
    storage = {} if store is None else {
        k: getattr(store, k) for k in ("storage_url", "s3_endpoint_url", "s3_key", "s3_secret")
    }  # fmt: skip
    base = bridge_settings(tmp_path, mqtt_url, **storage)
    settings = api_settings(base, public_url=f"http://127.0.0.1:{proxy_port}")
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=content, store=ctx.store, sign_method="SHA256")
    recorder = Recorder()
    bridge = Bridge(settings, ctx.engine, recorder, session_expiry=60, products=[fleet.product_key])
    proxy = CuttingProxy(settings.http_port, cuts or {}, port=proxy_port)
    with serve_api(settings):
        async with proxy.running(), running(bridge):
            yield Platform(settings, ctx.engine, fleet, recorder, proxy)
    ctx.engine.dispose()


def one_request_per_connection() -> httpx.AsyncClient:
    """So the proxy sees each request on a connection of its own."""
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def steps(progress: list[bytes], pk: str, dn: str) -> list[int]:
    topic = protocol.progress_topic(pk, dn)
    return [int(protocol.parse(topic, p).step) for p in progress]  # type: ignore[union-attr]


# -- the route, S3 down -------------------------------------------------------------------------


def s3_served(own_s3: OwnS3, tmp_path: Path) -> tuple[Settings, str]:
    assert own_s3.server is not None
    settings = api_settings(s3_settings(own_s3.server, tmp_path))
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=CONTENT, store=ctx.store, task_state=None)
    ctx.engine.dispose()
    assert fleet.firmware.id is not None
    url = download_url(settings, fleet.firmware.id, fleet.product_key, fleet.names[0])
    return settings, url


def download_errors() -> float:
    """The in-process API's count of downloads that failed for the store's sake."""
    found = REGISTRY.get_sample_value("ota_download_requests_total", {"outcome": "error"})
    return found or 0.0


def timed_get(url: str, **kw: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.get(url, timeout=60, **kw)  # type: ignore[arg-type]
    return r, time.monotonic() - started


def test_s3_down_is_a_quick_503_logged_once_and_over_when_s3_is_back(own_s3: OwnS3, tmp_path):
    settings, url = s3_served(own_s3, tmp_path)
    with serve_api(settings), outage_log().attached() as log:
        assert httpx.get(url).status_code == 200
        own_s3.kill()
        errors = download_errors()
        answers = [timed_get(url) for _ in range(6)]
        assert download_errors() - errors == 6  # ota_download_requests{outcome="error"}
        for r, seconds in answers:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 503 and "storage" in r.json()["detail"]
            assert seconds < 3  # one botocore retry, no minutes of them
        assert len(log.at(logging.ERROR)) == 1, log.at(logging.ERROR)  # once, not per request
        own_s3.start()
        deadline = time.monotonic() + 10
        while (r := httpx.get(url)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert r.status_code == 200 and r.content == CONTENT  # no restart of the API
        assert len(log.at(logging.WARNING)) == 1 and "back" in log.at(logging.WARNING)[0]
        assert len(log.at(logging.ERROR)) == 1


@pytest.mark.slow
def test_a_hung_s3_is_a_503_within_the_timeouts(own_s3: OwnS3, tmp_path):
    """SIGSTOP: S3's port still takes connections, nothing answers. Before, a request waited
    5 x 5 attempts of a 15 s read timeout."""
    settings, url = s3_served(own_s3, tmp_path)
    assert own_s3.proc is not None
    with serve_api(settings):
        assert httpx.get(url).status_code == 200
        own_s3.proc.send_signal(signal.SIGSTOP)
        try:
            (first, probe_seconds), (second, refused_seconds) = timed_get(url), timed_get(url)
        finally:
            own_s3.proc.send_signal(signal.SIGCONT)
        assert (first.status_code, second.status_code) == (503, 503)
        assert probe_seconds < 15  # 2 attempts x 5 s read timeout
        assert refused_seconds < 1  # within the probe interval: not asked again
        time.sleep(2.1)  # the next probe finds it back
        assert httpx.get(url).content == CONTENT


def test_s3_dying_mid_body_truncates_the_answer_and_range_resumes(own_s3: OwnS3, tmp_path):
    settings, url = s3_served(own_s3, tmp_path)
    got = bytearray()
    errors = download_errors()
    with serve_api(settings), outage_log().attached() as log:
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as r:
            assert r.headers["content-length"] == str(len(CONTENT))
            for chunk in r.iter_raw(64 * 1024):
                got += chunk
                if len(got) >= 1024 * 1024 and own_s3.proc.poll() is None:  # type: ignore[union-attr]
                    own_s3.kill()
        assert 1024 * 1024 <= len(got) < len(CONTENT)  # seen as cut short, not as a short file
        # One line for the outage; none of uvicorn's "Exception in ASGI application".
        assert [r.name for r in log.records] == ["ota.api.storage_outage"]
        # The 200 it had begun counts as an error once its body is broken off.
        deadline = time.monotonic() + 5
        while download_errors() == errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert download_errors() - errors == 1
        own_s3.start()
        time.sleep(2.1)
        r = httpx.get(url, headers={"Range": f"bytes={len(got)}-"})
        assert r.status_code == 206
        assert hashlib.sha256(bytes(got) + r.content).digest() == hashlib.sha256(CONTENT).digest()


# -- devices ------------------------------------------------------------------------------------


class OutageDevice(Device):
    """Kills the platform's S3 when its download passes 25 %, and starts it again later."""

    def __init__(self, s3: OwnS3, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.s3 = s3
        self.restarted: asyncio.Task[object] | None = None

    async def report_progress(self, step: int, desc: str = "", module: str = "default") -> None:
        await super().report_progress(step, desc, module)
        if step == 25 and self.restarted is None:
            await asyncio.to_thread(self.s3.kill)
            self.restarted = asyncio.create_task(self._start_later())

    async def _start_later(self) -> object:
        await asyncio.sleep(OUTAGE_SECONDS)
        return await asyncio.to_thread(self.s3.start)


@pytest.mark.slow
async def test_a_device_rides_out_an_s3_outage_and_the_task_never_fails(
    own_s3: OwnS3, mqtt_url: str, tmp_path: Path
):
    assert own_s3.server is not None
    store = s3_settings(own_s3.server, tmp_path)
    installed: list[bytes] = []

    async def install(path: Path | None, upgrade: Upgrade) -> None:
        assert path is not None
        installed.append(path.read_bytes())

    async with (
        platform(tmp_path, mqtt_url, store, content=LONG_CONTENT) as p,
        one_request_per_connection() as http,
    ):
        pk, dn = p.fleet.product_key, p.fleet.names[0]
        results: asyncio.Queue[int] = asyncio.Queue()
        device = OutageDevice(
            own_s3, pk, dn, mqtt_url=mqtt_url, versions="1.0.0", http=http, install=install,
            download_dir=tmp_path / "dl", download_retry=QUICK,
            on_result=lambda _d, _u, code: results.put_nowait(code),
        )  # fmt: skip
        topic = protocol.progress_topic(pk, dn)
        with outage_log().attached() as log:
            async with watching(mqtt_url, topic) as progress, online(device):
                await p.push()
                assert await asyncio.wait_for(results.get(), OUTAGE_SECONDS + 40) == 100
                await until(lambda: tasks(p.engine, p.fleet.batch_id)[dn].state == "updated")
            await until(lambda: steps(progress, pk, dn)[-1:] == [100])
    assert device.restarted is not None and device.restarted.done()
    assert hashlib.sha256(installed[0]).digest() == hashlib.sha256(LONG_CONTENT).digest()
    statuses = p.proxy.statuses
    print("exchanges:", [(e.status, e.range) for e in p.proxy.exchanges])  # shown on failure
    assert statuses[0] == 200 and p.proxy.exchanges[0].bytes_down < len(LONG_CONTENT)  # cut short
    assert 503 in statuses and statuses[-1] == 206, statuses
    resumed_at = int((p.proxy.exchanges[-1].range or "").removeprefix("bytes=").rstrip("-"))
    assert 1024 * 1024 < resumed_at < len(LONG_CONTENT)  # from the bytes on disk, not from 0
    assert device.stats["download_retries"] == len(statuses) - 1
    assert min(steps(progress, pk, dn)) > 0  # never a failure step while retrying
    assert [s[2].outcome for s in p.recorder.reports] == ["updated"]
    assert len(log.at(logging.ERROR)) == 1 and len(log.at(logging.WARNING)) == 1


async def test_a_cut_connection_resumes_with_range(mqtt_url: str, tmp_path: Path):
    cut = 3_000_000
    cuts = {0: cut, 1: 1000}
    async with platform(tmp_path, mqtt_url, cuts=cuts) as p, one_request_per_connection() as http:
        pk, dn = p.fleet.product_key, p.fleet.names[0]
        results: asyncio.Queue[int] = asyncio.Queue()
        device = Device(
            pk, dn, mqtt_url=mqtt_url, versions="1.0.0", http=http, download_retry=QUICK,
            on_result=lambda _d, _u, code: results.put_nowait(code),
        )  # fmt: skip
        topic = protocol.progress_topic(pk, dn)
        async with watching(mqtt_url, topic) as progress, online(device):
            await p.push()
            assert await asyncio.wait_for(results.get(), 30) == 100
            await until(lambda: tasks(p.engine, p.fleet.batch_id)[dn].state == "updated")
    first, second, third = p.proxy.exchanges
    assert (first.status, first.range, first.cut) == (200, None, True)
    assert (second.status, second.cut) == (206, True)
    assert third.status == 206 and not third.cut
    # Each resumes from the body bytes the device kept (the answer's head is not in them).
    assert second.range is not None and third.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < cut
    assert int(third.range.removeprefix("bytes=").rstrip("-")) > resumed_at
    assert device.stats["download_retries"] == 2
    assert min(steps(progress, pk, dn)) > 0
    assert [s[2].outcome for s in p.recorder.reports] == ["updated"]


async def test_permanent_answers_fail_at_once(mqtt_url: str, tmp_path: Path):
    """A 403 (a forged or expired URL) or 404 is not retried: the device reports -2 at once."""
    async with platform(tmp_path, mqtt_url) as p, one_request_per_connection() as http:
        upgrade = p.upgrade()
        retried: list[str] = []
        for url in (upgrade.url.replace("sig=", "sig=0"), upgrade.url.replace("/download/", "/x/")):
            forged = Upgrade(**{**upgrade.__dict__, "url": url})
            started = time.monotonic()
            with pytest.raises(DownloadFailed):
                await download(
                    http, forged, None, retry=QUICK, on_retry=lambda why, _: retried.append(why)
                )
            assert time.monotonic() - started < 2
        assert retried == []
        assert p.proxy.statuses == [403, 404]


async def test_direct_s3_urls_need_no_s3_to_push_and_the_device_waits_for_s3(
    own_s3: OwnS3, tmp_path: Path
):
    """With s3_direct_urls the push carries a presigned S3 URL: made without S3 (the worker's
    push activity reads no S3), and a device fetching it while S3 is down retries until S3
    is back."""
    assert own_s3.server is not None
    settings = api_settings(s3_settings(own_s3.server, tmp_path), s3_direct_urls=True)
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=CONTENT, store=ctx.store, sign_method="SHA256")
    ctx.engine.dispose()
    own_s3.kill()
    # What the push activity does (activities/push.py -> upgrade_data): a signature computed
    # here, no request to S3.
    data = upgrade_data(settings, fleet.firmware, fleet.product_key, fleet.names[0])
    assert data["url"].startswith(own_s3.server.endpoint_url)
    upgrade = protocol.parse_upgrade(protocol.encode_upgrade(data, 1))
    assert isinstance(upgrade, Upgrade)
    retried: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http:
        fetch = asyncio.create_task(
            download(http, upgrade, None, retry=QUICK, on_retry=lambda w, _: retried.append(w))
        )
        await asyncio.sleep(3)
        assert not fetch.done() and retried  # connection refused: retried, not failed
        await asyncio.to_thread(own_s3.start)
        await asyncio.wait_for(fetch, 30)  # verified (SHA256) or it raises
