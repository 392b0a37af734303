"""python -m bench.registration N [plugin|dynsec]: how long registering N devices with their
broker users takes (`register_fleet`, as `ota simulate --register` does), and a full sync that
finds nothing to do, on a Mosquitto of its own with that plugin (docs/security.md)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ota.context import Context
from ota.device.simulator import device_name
from ota.devstack import answers, free_port, mosquitto_binary, mosquitto_conf
from ota.identity.broker_setup import USERS_FILE
from ota.identity.sync import sync_broker
from ota.services.devices import register_fleet
from ota.settings import Settings


def main() -> None:
    devices = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    auth = sys.argv[2] if len(sys.argv) > 2 else "plugin"
    home = Path(tempfile.mkdtemp(prefix="ota-registration-"))
    port = free_port()
    settings = Settings(
        home=home,
        broker_auth=auth,
        mqtt_service_secret="registration-bench",
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        broker_timeout_seconds=600,  # dynsec at a few thousand devices is slow: that's the point
    )
    conf = mosquitto_conf(home, "127.0.0.1", port, settings)
    binary = mosquitto_binary() or "mosquitto"
    with (home / "mosquitto.log").open("wb") as log:
        broker = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not answers("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        ctx = Context(settings)
        sync_broker(ctx.engine, settings)  # the services' users
        names = [device_name("sim-", i) for i in range(devices)]
        start = time.monotonic()
        registered = register_fleet(ctx.engine, settings, "pk1", names)
        took = time.monotonic() - start
        print(f"{auth}: registered {devices} devices in {took:.2f} s ({registered.broker})")
        start = time.monotonic()
        report = sync_broker(ctx.engine, settings)
        took = time.monotonic() - start
        print(f"{auth}: full sync in {took:.2f} s, {report.changed} changed")
        users = home / "mosquitto" / USERS_FILE
        if users.exists():
            print(f"{auth}: users file {users.stat().st_size:,} bytes")
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
