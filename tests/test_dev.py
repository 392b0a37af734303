"""`ota dev --demo` as a new user runs it: everything starts, the demo batch updates devices,
Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from ota.db.engine import make_engine
from ota.db.models import Batch, Firmware, Task
from ota.identity.broker_setup import DYNSEC_FILE, USERS_FILE
from tests.fixtures.net import free_port, port_open

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


@pytest.mark.parametrize(
    ("broker", "stop_signal"), [("mosquitto", signal.SIGINT), ("embedded", signal.SIGTERM)]
)
def test_ota_dev_demo_runs_the_whole_flow_and_stops_cleanly(tmp_path, broker, stop_signal):
    """With Mosquitto, and with the embedded broker a machine without Mosquitto gets (MQTT 3.1.1:
    the bridge subscribes without a shared subscription). Ctrl-C stops it even when it was started
    as a script's background job (SIGINT inherited ignored), and so does `kill` (SIGTERM)."""
    temporal_port, mqtt_port, http_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "OTA_DEV_BROKER": broker,
        "OTA_HOME": str(tmp_path / "home"),
        "OTA_TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "OTA_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",  # nothing there: ota dev starts a broker
        "OTA_HTTP_PORT": str(http_port),
    }
    env.pop("OTA_API_TOKEN", None)
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115
    dev = subprocess.Popen(
        [sys.executable, "-m", "starter", "dev", "--demo"],
        env=env,
        stdout=log,
        stderr=log,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `ota dev &` would
    )
    engine = None
    try:
        deadline = time.monotonic() + 240
        updated = 0
        while time.monotonic() < deadline and updated < 5:
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()
            time.sleep(2)
            if (tmp_path / "home" / "ota.db").exists():
                engine = engine or make_engine(f"sqlite:///{tmp_path / 'home' / 'ota.db'}")
                with Session(engine) as s:
                    batch = s.exec(select(Batch).where(Batch.kind == "static")).first()
                    if batch:
                        tasks = s.exec(select(Task).where(Task.batch_id == batch.id)).all()
                        updated = sum(t.state == "updated" for t in tasks)
        output = (tmp_path / "dev.log").read_text()
        assert updated >= 5, output
        assert "API token:" in output and "Temporal Web UI" in output
        # The worker and the bridge serve /metrics (and /readyz) where the banner says.
        scrape = re.findall(r"(http://\S+/metrics) \((worker|bridge)\)", output)
        assert [name for _, name in scrape] == ["worker", "bridge"], output
        for url, _ in scrape:
            assert httpx.get(url, timeout=10).status_code == 200
            assert httpx.get(url.replace("/metrics", "/readyz"), timeout=10).status_code == 200
        with Session(engine) as s:
            assert s.exec(select(Firmware)).one().state == "verified"
            # verification updated 2 devices; phased 50% of the 48 still on 1.0.0 is 24
            assert len(s.exec(select(Task).where(Task.batch_id == batch.id)).all()) == 24
        # When the demo batch is over, one line says how it ended and where to look.
        finished = re.compile(
            r"demo: batch (\w+) completed: 24 updated\. See it at (\S+) and its workflow at (\S+)"
        )
        while not (said := finished.search((tmp_path / "dev.log").read_text())):
            assert time.monotonic() < deadline + 60, (tmp_path / "dev.log").read_text()
            time.sleep(1)
        assert said.group(1) == batch.id
        assert said.group(2) == f"http://127.0.0.1:{http_port}/batches/{batch.id}"
        ui = (
            f"http://127.0.0.1:{temporal_port + 1000}/namespaces/default/workflows/batch-{batch.id}"
        )
        assert said.group(3) == ui
        token = re.search(r"API token: ([^)\s]+)", output).group(1)  # type: ignore[union-attr]
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as browser:
            path = said.group(2).removeprefix(str(browser.base_url).rstrip("/"))
            page = browser.post(
                "/login", data={"token": token, "next": path}, follow_redirects=True
            )
        assert page.status_code == 200 and ui in page.text  # the console links that workflow
        assert all(port_open(p) for p in (temporal_port, mqtt_port, http_port))
        started = _children(dev.pid)
        assert len(started) >= 6  # temporal, broker, worker, bridge, api, simulator
        if broker == "mosquitto":  # devices authenticate: each has its user on the broker
            names = broker_users(tmp_path / "home" / "mosquitto")
            assert {"ota-bridge", "ota-worker"} <= names
            assert len([n for n in names if n.endswith("&demo")]) == 50
            assert "NOT AUTHENTICATED" not in output
        else:
            assert "DEVICES ARE NOT AUTHENTICATED: the embedded broker" in output
    finally:
        dev.send_signal(stop_signal)
        code = dev.wait(60)
        if engine:
            engine.dispose()
    assert code == 0, (tmp_path / "dev.log").read_text()
    for pid in started:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"process {pid} left running"
    assert not any(port_open(p) for p in (temporal_port, mqtt_port, http_port))


def broker_users(folder: Path) -> set[str]:
    """The users `ota dev`'s Mosquitto holds: ota_auth's file, or dynamic-security's where the
    plugin could not be built."""
    ota_auth = folder / USERS_FILE
    if ota_auth.exists():
        return {u["username"] for u in json.loads(ota_auth.read_text())["users"]}
    return {c["username"] for c in json.loads((folder / DYNSEC_FILE).read_text())["clients"]}


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True
