"""A push of the version a device already runs: what Alibaba's LinkKit and our SDK answer.

Issue 17 relies on it: after a broker restart (ota/bridge/reconcile.py), and before a timeout
fails a device, the platform pushes again every task in flight, so that a device whose report was
lost reports again. Each device here is first updated 1.0.0 -> 2.0.0 by a normal push, then
pushed 2.0.0 again; its reports are watched on the broker, with their times.

LinkKit (aliyun-iot-linkkit 1.2.13) keeps no version of its own: `__on_internal_async_message`
hands every well-formed push to the application's `on_ota_message_arrived`, with no comparison,
and the application Alibaba documents (tests/linkkit/device.py) downloads, checks and reports
again. Our SDK compares first (`Device._on_message`) and only reports its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.device.sdk import Device
from ota.mqtt import MqttEndpoint
from ota.push import upgrade_data
from tests import test_linkkit
from tests.linkkit.seed import Fleet, seed_fleet, tasks, versions
from tests.linkkit.servers import api_settings, serve_api
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until
from tests.test_device_sdk import online
from tests.test_linkkit import DEVICE_SCRIPT, read_events

linkkit_python = test_linkkit.linkkit_python  # the session fixture: LinkKit's own venv


@dataclass(frozen=True)
class Report:
    at: float  # time.monotonic() when the watcher got it
    kind: str  # "version" (/ota/device/inform) or "progress" (/ota/device/progress)
    value: str | int


@contextlib.asynccontextmanager
async def device_reports(mqtt_url: str, pk: str, dn: str) -> AsyncIterator[list[Report]]:
    """Every version and progress report the device publishes while the block runs."""
    seen: list[Report] = []
    async with publisher(mqtt_url) as client:
        await client.subscribe(
            [(protocol.inform_topic(pk, dn), 1), (protocol.progress_topic(pk, dn), 1)]
        )

        async def collect() -> None:
            async for m in client.messages:
                params = json.loads(bytes(m.payload))["params"]  # type: ignore[arg-type]
                if m.topic.matches(protocol.inform_topic(pk, dn)):
                    seen.append(Report(time.monotonic(), "version", params["version"]))
                else:  # LinkKit sends the step as a string
                    seen.append(Report(time.monotonic(), "progress", int(params["step"])))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()


def since(seen: list[Report], t0: float) -> list[tuple[str, str | int]]:
    return [(r.kind, r.value) for r in seen if r.at >= t0]


def first_version_at(seen: list[Report], version: str, t0: float) -> float | None:
    return next((r.at for r in seen if r.at >= t0 and r.value == version), None)


async def push(settings, fleet: Fleet) -> float:  # type: ignore[no-untyped-def]
    """The worker's push of the fleet's firmware (2.0.0); returns when it was sent (the device
    may answer before the broker's PUBACK is back)."""
    pk, dn = fleet.product_key, fleet.names[0]
    data = upgrade_data(settings, fleet.firmware, pk, dn)
    async with publisher(settings.mqtt_url) as client:
        sent = time.monotonic()
        await client.publish(protocol.upgrade_topic(pk, dn), protocol.encode_upgrade(data, 1), 1)
    return sent


async def start_linkkit(python: Path, fleet: Fleet, mqtt_url: str, work: Path, updates: int):
    work.mkdir()
    port = MqttEndpoint.from_url(mqtt_url).port
    argv = [str(DEVICE_SCRIPT), fleet.product_key, fleet.names[0], str(port), "1.0.0"]
    argv += [str(work), str(work / "events.jsonl"), "push"]
    with (work / "stdout.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(python), *argv, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "OTA_LK_UPDATES": str(updates)},
        )  # fmt: skip
    subscribed = lambda: any(e["event"] == "subscribed" for e in read_events(work / "events.jsonl"))  # noqa: E731
    await until(subscribed, what="LinkKit subscribed")
    return proc


async def test_linkkit_pushed_the_version_it_runs_downloads_and_reports_all_again(
    linkkit_python: Path, mqtt_url: str, tmp_path: Path
):
    settings = api_settings(bridge_settings(tmp_path, mqtt_url))
    ctx = Context(settings)
    content = os.urandom(300_000)
    fleet = seed_fleet(ctx.engine, 1, content=content, store=ctx.store)
    pk, dn = fleet.product_key, fleet.names[0]
    recorder = Recorder()
    work = tmp_path / "device"
    with serve_api(settings):
        bridge = Bridge(settings, ctx.engine, recorder, session_expiry=60, products=[pk])
        async with running(bridge), device_reports(mqtt_url, pk, dn) as seen:
            proc = await start_linkkit(linkkit_python, fleet, mqtt_url, work, updates=2)
            first = await push(settings, fleet)
            await until(lambda: first_version_at(seen, "2.0.0", first), what="first report")
            await until(lambda: len(recorder.reports) == 1, what="the updated signal")
            again = await push(settings, fleet)
            reported = await until(
                lambda: first_version_at(seen, "2.0.0", again), what="second report"
            )
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            await asyncio.sleep(0.5)  # the bridge's flush (0.2 s) of the repeated reports

    # Not ignored, not refused: the same download, check, progress and version as the first time.
    assert since(seen, again) == [("progress", 10), ("progress", 100), ("version", "2.0.0")]
    events = read_events(work / "events.jsonl")
    assert [e["version"] for e in events if e["event"] == "ota"] == ["2.0.0", "2.0.0"]
    downloads = [e for e in events if e["event"] == "downloaded"]
    assert [(d["ok"], d["bytes"]) for d in downloads] == [(True, len(content))] * 2
    took = reported - again
    print(f"LinkKit re-push: version reported again {took * 1000:.0f} ms after the push")
    assert took < 5, took  # a local 300 kB download; a device's real one takes its network's time
    # The platform keeps what it recorded: the repeated reports do not move an updated task.
    assert versions(ctx.engine, pk) == {dn: "2.0.0"}
    assert tasks(ctx.engine, fleet.batch_id)[dn].state == "updated"
    # The repeated version is signalled again (a redelivered report must reach a workflow whose
    # first signal was lost); a workflow already finished just is not found. Nothing written.
    assert [r[2].outcome for r in recorder.reports] == ["updated", "updated"]
    ctx.engine.dispose()


async def test_linkkit_pushed_again_while_downloading_starts_a_second_download(
    linkkit_python: Path, mqtt_url: str, tmp_path: Path
):
    """A reconciliation push that reaches a LinkKit device still working on the same update is
    not ignored (our SDK ignores it, busy): the sample application starts a second download of
    the same file into the same path, beside the first."""
    settings = api_settings(bridge_settings(tmp_path, mqtt_url))
    ctx = Context(settings)
    content = os.urandom(8_000_000)
    fleet = seed_fleet(ctx.engine, 1, content=content, store=ctx.store)
    pk, dn = fleet.product_key, fleet.names[0]
    work = tmp_path / "device"
    with serve_api(settings):
        async with device_reports(mqtt_url, pk, dn) as seen:
            proc = await start_linkkit(linkkit_python, fleet, mqtt_url, work, updates=2)
            first = await push(settings, fleet)
            await push(settings, fleet)  # milliseconds later: the first download is running
            assert await asyncio.wait_for(proc.wait(), 60) == 0
            await asyncio.sleep(0.5)
    events = read_events(work / "events.jsonl")
    print("LinkKit pushed twice:", since(seen, first), [e for e in events if "ok" in e])
    assert [e["event"] for e in events].count("ota") == 2
    assert since(seen, first).count(("progress", 10)) == 2
    ctx.engine.dispose()


async def test_our_sdk_pushed_the_version_it_runs_reports_that_version_at_once(
    mqtt_url: str, tmp_path: Path
):
    settings = api_settings(bridge_settings(tmp_path, mqtt_url))
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=os.urandom(300_000), store=ctx.store)
    pk, dn = fleet.product_key, fleet.names[0]
    results: list[int] = []
    device = Device(
        pk, dn, mqtt_url=mqtt_url, versions="1.0.0", session_expiry=60,
        on_result=lambda _d, _u, code: results.append(code),
    )  # fmt: skip
    with serve_api(settings):
        async with device_reports(mqtt_url, pk, dn) as seen, online(device):
            first = await push(settings, fleet)
            await until(lambda: first_version_at(seen, "2.0.0", first), what="first report")
            assert results == [100]
            again = await push(settings, fleet)
            reported = await until(
                lambda: first_version_at(seen, "2.0.0", again), what="second report"
            )
            await asyncio.sleep(0.5)  # nothing else follows
    assert since(seen, again) == [("version", "2.0.0")]  # no download, no progress
    assert results == [100] and device.stats["result_100"] == 1
    took = reported - again
    print(f"our SDK re-push: version reported again {took * 1000:.0f} ms after the push")
    assert took < 1, took
    ctx.engine.dispose()
