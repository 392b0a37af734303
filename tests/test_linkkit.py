"""Alibaba's Python device SDK, unchanged, updates end to end against our broker and bridge."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.identity.accounts import ServiceRole, service_endpoint
from ota.identity.sync import sync_broker
from ota.mqtt import MqttEndpoint
from ota.push import upgrade_data
from ota.services import device_identity
from tests.linkkit.seed import seed_fleet, tasks, versions
from tests.linkkit.servers import api_settings, serve_api
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until

LINKKIT = "1.2.13"
DEVICE_SCRIPT = Path(__file__).parent / "linkkit" / "device.py"


def _works(python: Path) -> bool:
    check = [str(python), "-c", "import linkkit.linkkit, paho.mqtt.client"]
    return python.exists() and subprocess.run(check, capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def linkkit_python() -> Path:
    """A venv with aliyun-iot-linkkit (it needs paho-mqtt<2), kept in /tmp across runs."""
    venv = Path(tempfile.gettempdir()) / f"ota-linkkit-{LINKKIT}"
    python = venv / "bin" / "python"
    if _works(python):
        return python
    build = venv.with_name(f"{venv.name}.{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(build)], check=True)
    pip = [str(build / "bin" / "python"), "-m", "pip", "install", "-q"]
    pip += ["--disable-pip-version-check", f"aliyun-iot-linkkit=={LINKKIT}", "paho-mqtt<2"]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"aliyun-iot-linkkit {LINKKIT} cannot be installed: {done.stderr[-800:]}")
    shutil.rmtree(venv, ignore_errors=True)
    build.rename(venv)
    assert _works(python)
    return python


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_linkkit_devices_update_by_push_and_by_query(
    linkkit_python: Path, mqtt_url: str, tmp_path: Path
):
    settings = api_settings(bridge_settings(tmp_path, mqtt_url))
    ctx = Context(settings)
    content = os.urandom(300_000)
    pushed = seed_fleet(ctx.engine, 1, content=content, store=ctx.store)  # MD5: "Md5" on the wire
    queried = seed_fleet(ctx.engine, 1, content=content, store=ctx.store, sign_method="SHA256")
    recorder = Recorder()
    port = str(MqttEndpoint.from_url(mqtt_url).port)
    logs: dict[str, Path] = {}
    procs = []
    with serve_api(settings):
        pks = [pushed.product_key, queried.product_key]
        async with running(Bridge(settings, ctx.engine, recorder, session_expiry=60, products=pks)):
            for fleet, mode in ((pushed, "push"), (queried, "query")):
                work = tmp_path / mode
                work.mkdir()
                logs[mode] = work / "events.jsonl"
                argv = [str(DEVICE_SCRIPT), fleet.product_key, fleet.names[0], port, "1.0.0"]
                argv += [str(work), str(logs[mode]), mode]
                out = (work / "stdout.log").open("wb")
                procs.append(
                    await asyncio.create_subprocess_exec(
                        str(linkkit_python), *argv, stdout=out, stderr=subprocess.STDOUT
                    )
                )
            await until(lambda: any(e["event"] == "subscribed" for e in read_events(logs["push"])))
            dn = pushed.names[0]
            data = upgrade_data(settings, pushed.firmware, pushed.product_key, dn)
            async with publisher(mqtt_url) as client:
                payload = protocol.encode_upgrade(data, 1626969597470)
                await client.publish(protocol.upgrade_topic(pushed.product_key, dn), payload, 1)
            codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 90)
            await until(lambda: len(recorder.reports) == 2, what="both updated signals")
    for mode, fleet in (("push", pushed), ("query", queried)):
        events = {e["event"]: e for e in read_events(logs[mode])}
        assert events["connected"]["rc"] == 0
        assert events["ota"]["notice"] == (1 if mode == "push" else 2)  # push, or get_reply
        assert events["ota"]["version"] == "2.0.0" and events["ota"]["size"] == len(content)
        assert events["downloaded"]["ok"], events["downloaded"]
        assert events["downloaded"]["bytes"] == len(content)
        assert events["reported"]["version"] == "2.0.0"
        dn = fleet.names[0]
        assert versions(ctx.engine, fleet.product_key) == {dn: "2.0.0"}
        task = tasks(ctx.engine, fleet.batch_id)[dn]
        assert (task.state, task.progress) == ("updated", 100)
        assert task.first_progress_at is not None
    assert codes == [0, 0]
    assert {s[2].outcome for s in recorder.reports} == {"updated"}


async def _run_linkkit(
    python: Path, pk: str, dn: str, port: int, work: Path, mode: str, env: dict[str, str]
) -> tuple[int, list[dict]]:
    work.mkdir()
    events = work / "events.jsonl"
    argv = [str(DEVICE_SCRIPT), pk, dn, str(port), "1.0.0", str(work), str(events), mode]
    with (work / "stdout.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(python), *argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        code = await asyncio.wait_for(proc.wait(), 90)
    return code, read_events(events)


async def _pushed_update(
    python: Path, settings, ctx: Context, fleet, port: int, tmp_path: Path, env: dict[str, str]
) -> tuple[int, list[dict]]:
    """Run LinkKit with `env`'s credentials against bridge and API; push it the fleet's firmware
    as the worker does (on the worker's own broker account) and wait for its report."""
    pk, dn = fleet.product_key, fleet.names[0]
    recorder = Recorder()
    worker = service_endpoint(settings, ServiceRole.WORKER)
    with serve_api(settings):
        async with running(
            Bridge(settings, ctx.engine, recorder, session_expiry=60, products=[pk])
        ):
            device = asyncio.create_task(
                _run_linkkit(python, pk, dn, port, tmp_path / "push", "push", env)
            )
            events_file = tmp_path / "push" / "events.jsonl"
            await until(lambda: any(e["event"] == "subscribed" for e in read_events(events_file)))
            data = upgrade_data(settings, fleet.firmware, pk, dn)
            async with worker.client("test-worker") as client:
                payload = protocol.encode_upgrade(data, 1626969597470)
                await client.publish(protocol.upgrade_topic(pk, dn), payload, 1)
            code, events = await device
            await until(lambda: len(recorder.reports) == 1, what="the updated signal")
    return code, events


async def test_linkkit_with_its_credentials_updates_on_a_broker_that_enforces_identity(
    linkkit_python: Path, secure_broker, tmp_path: Path
):
    """Device identity with Alibaba's SDK unchanged, on either mechanism: the parameters `ota
    device credentials` shows connect it (LinkKit's direct mode) and it updates end to end; a
    wrong password, and the triple with a wrong secret, are refused."""
    extra = {k: v for k, v in secure_broker.settings().items() if k != "mqtt_url"}
    settings = api_settings(bridge_settings(tmp_path, secure_broker.url, **extra))
    ctx = Context(settings)
    content = os.urandom(200_000)
    fleet = seed_fleet(ctx.engine, 1, content=content, store=ctx.store)
    report = await asyncio.to_thread(sync_broker, ctx.engine, settings)  # gives it a secret
    assert report.secrets_created == 1
    dn = fleet.names[0]
    creds = device_identity.credentials(ctx.engine, settings, fleet.product_key, dn)
    direct = {
        "OTA_LK_USERNAME": creds["username"],
        "OTA_LK_CLIENT_ID": creds["client_id"],
        "OTA_LK_PASSWORD": creds["password"],
    }
    port, pk = secure_broker.port, fleet.product_key
    refused = [
        await _run_linkkit(
            linkkit_python, pk, dn, port, tmp_path / "wrong", "connect",
            {**direct, "OTA_LK_PASSWORD": "0" * 64},
        ),
        await _run_linkkit(
            linkkit_python, pk, dn, port, tmp_path / "triple", "connect",
            {"OTA_LK_SECRET": "0" * 32},
        ),
    ]  # fmt: skip
    for code, events in refused:
        assert code != 0 and not any(e == {"event": "connected", "rc": 0} for e in events)

    code, events = await _pushed_update(
        linkkit_python, settings, ctx, fleet, port, tmp_path, direct
    )
    assert code == 0, events
    assert {e["event"]: e for e in events}["reported"]["version"] == "2.0.0"
    assert versions(ctx.engine, pk) == {dn: "2.0.0"}
    assert tasks(ctx.engine, fleet.batch_id)[dn].state == "updated"


@pytest.mark.parametrize("secure_broker", ["plugin"], indirect=True)
async def test_linkkit_in_its_triple_mode_updates_on_ota_auth(
    linkkit_python: Path, secure_broker, tmp_path: Path
):
    """LinkKit given only the triple signs a fresh timestamp (HMAC-SHA1, client id
    `{pk}&{dn}|securemode=3,...,timestamp=...|`) at every connect: ota_auth checks the signature
    itself, so it connects and updates end to end."""
    extra = {k: v for k, v in secure_broker.settings().items() if k != "mqtt_url"}
    settings = api_settings(bridge_settings(tmp_path, secure_broker.url, **extra))
    ctx = Context(settings)
    content = os.urandom(200_000)
    fleet = seed_fleet(ctx.engine, 1, content=content, store=ctx.store)
    await asyncio.to_thread(sync_broker, ctx.engine, settings)  # gives it a secret
    pk, dn, port = fleet.product_key, fleet.names[0], secure_broker.port
    secret = device_identity.credentials(ctx.engine, settings, pk, dn)["device_secret"]
    triple = {"OTA_LK_SECRET": secret}

    code, events = await _pushed_update(
        linkkit_python, settings, ctx, fleet, port, tmp_path, triple
    )
    assert code == 0, events
    assert {e["event"]: e for e in events}["connected"]["rc"] == 0
    assert versions(ctx.engine, pk) == {dn: "2.0.0"}
    assert tasks(ctx.engine, fleet.batch_id)[dn].state == "updated"
