"""The fleet simulator: many SDK devices, injected failures, late devices, and `ota simulate`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session

from ota import protocol
from ota.bridge import Bridge
from ota.context import Context
from ota.contracts import device_workflow_id
from ota.db.engine import make_engine
from ota.db.models import Task
from ota.device.simulator import Fleet, FleetConfig
from ota.push import upgrade_data
from tests.linkkit.seed import devices, new_pk, seed_fleet, tasks
from tests.linkkit.servers import api_settings, serve_api
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until


@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_a_fleet_updates_and_fails_as_configured(
    mqtt_url: str, tmp_path: Path, mqtt_protocol: str
):
    """On MQTT 5, and on 3.1.1 as Alibaba's device SDKs speak (the bench's fleet)."""
    n = 200
    settings = api_settings(bridge_settings(tmp_path, mqtt_url))
    ctx = Context(settings)
    f = seed_fleet(ctx.engine, n, store=ctx.store)
    # seed_fleet names devices dev-00000...; the simulator's prefix matches them.
    cfg = FleetConfig(
        f.product_key, n, "1.0.0", prefix="dev-", mqtt_url=mqtt_url, install_seconds=0.2,
        fail_rate=0.05, download_fail_rate=0.1, verify_fail_rate=0.1, install_fail_rate=0.05,
        session_expiry=60, seed=7, mqtt_protocol=mqtt_protocol,
    )  # fmt: skip
    fleet, recorder = Fleet(cfg), Recorder()

    bridge = Bridge(settings, ctx.engine, recorder, session_expiry=60, products=[f.product_key])
    with serve_api(settings):
        async with running(bridge):
            run = asyncio.create_task(fleet.run())
            await until(lambda: sum(d.is_connected for d in fleet.devices) == n, 30)
            async with publisher(mqtt_url) as client:
                for dn in f.names:
                    data = upgrade_data(settings, f.firmware, f.product_key, dn)
                    topic = protocol.upgrade_topic(f.product_key, dn)
                    await client.publish(topic, protocol.encode_upgrade(data, 1), qos=1)
            await until(lambda: sum(fleet.results.values()) == n, 60, what="every device's result")
            # Each task says pushed, so each device's 1.0.0 on connect was an `online` too.
            await until(lambda: len(recorder.reports) == n, 20, what="a report per device")
            fleet.stop.set()
            summary = await run

            def all_offline() -> bool:  # each device said goodbye as it stopped
                return not any(d.online for d in devices(ctx.engine, f.product_key).values())

            await until(all_offline, what="every device offline")
    assert summary["devices"] == summary["connected_once"] == n
    failed = {k: v for k, v in summary.items() if k.startswith("failed_")}
    assert set(failed) == {"failed_update", "failed_download", "failed_verify", "failed_install"}
    reasons = Counter(s[2].reason or s[2].outcome for s in recorder.reports)
    assert reasons == {
        "updated": summary["updated"],
        "update_failed": failed["failed_update"],
        "download_failed": failed["failed_download"],
        "verify_failed": failed["failed_verify"],
        "flash_failed": failed["failed_install"],
    }
    states = Counter(t.state for t in tasks(ctx.engine, f.batch_id).values())
    assert (
        states["updated"] == summary["updated"] and states["in_upgrade"] == n - summary["updated"]
    )
    print(f"\n{n} simulated devices: {dict(summary)}; bridge {dict(bridge.stats)}")
    assert bridge.stats["transactions"] < n


async def test_offline_devices_connect_later_and_wake_their_workflows(mqtt_url: str, tmp_path):
    settings = bridge_settings(tmp_path, mqtt_url)
    engine = Context(settings).engine
    f = seed_fleet(engine, 6, task_state="to_be_pushed")
    with Session(engine) as s:
        s.execute(update(Task).values(reason="offline"))
        s.commit()
    cfg = FleetConfig(
        f.product_key, 6, "1.0.0", prefix="dev-", mqtt_url=mqtt_url, offline=2, offline_delay=60,
        session_expiry=60,
    )  # fmt: skip
    fleet, recorder = Fleet(cfg), Recorder()

    async with running(
        Bridge(settings, engine, recorder, session_expiry=60, products=[f.product_key])
    ):
        run = asyncio.create_task(fleet.run())
        await until(lambda: len(recorder.signals) == 4, what="the early devices")
        assert sum(d.online for d in devices(engine, f.product_key).values()) == 4
        await asyncio.sleep(0.5)
        assert len(recorder.signals) == 4  # the late ones wait for the delay, or to be told
        fleet.wake_late.set()
        await until(lambda: len(recorder.signals) == 6, what="the late devices")
        fleet.stop.set()
        await run
    assert {name for _wid, name in recorder.signals} == {"online"}
    late = sorted(wid for wid, _name in recorder.signals[4:])
    assert late == [device_workflow_id(f.product_key, f"dev-0000{i}") for i in (4, 5)]


def test_ota_simulate_registers_and_summarises(mqtt_url: str, tmp_path: Path):
    pk = new_pk()
    env = {**os.environ, "OTA_HOME": str(tmp_path), "OTA_MQTT_URL": mqtt_url}
    env["OTA_BROKER_AUTH"] = "none"  # the machine's anonymous Mosquitto
    argv = [sys.executable, "-m", "starter", "simulate", "--product", pk, "--devices", "30"]
    argv += ["--version", "1.0.0", "--register", "--duration", "4", "--processes", "2"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "devices 30, connected 30, updated 0, failed 0" in out.stdout
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    assert len(devices(engine, pk)) == 30


def test_simulate_refuses_an_unknown_mqtt_protocol():
    out = subprocess.run(
        [sys.executable, "-m", "starter", "simulate", "--product", "p", "--version", "1.0.0",
         "--mqtt-protocol", "4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "mqtt_protocol" in out.stderr and "5 or 3.1.1" in out.stderr


async def test_a_stopping_fleet_writes_what_each_device_runs(mqtt_url: str, tmp_path: Path):
    """The fault harness holds the platform's records against this file: the devices' own view.
    A slice of a fleet split over processes writes its own file, its first index appended."""
    state = tmp_path / "fleet.json"
    cfg = FleetConfig(
        new_pk(), 5, "1.0.0", mqtt_url=mqtt_url, first=2, count=3, state_file=str(state)
    )
    fleet = Fleet(cfg)
    run = asyncio.create_task(fleet.run())
    await until(lambda: len(fleet.devices) == 3, 10)
    fleet.devices[1].versions["default"] = "2.0.0"  # as an installed update leaves it
    fleet.stop.set()
    await run
    written = json.loads((tmp_path / "fleet.json.2").read_text())
    assert written == {
        "sim-00002": {"default": "1.0.0"},
        "sim-00003": {"default": "2.0.0"},
        "sim-00004": {"default": "1.0.0"},
    }
    assert not state.exists()
