"""The HTTP server (`ota api`'s app) on a free port, in a thread of the test process."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from ota.api.app import create_app
from ota.settings import Settings
from tests.fixtures.net import free_port, wait_for_port


def api_settings(base: Settings, **kw: object) -> Settings:
    """`base` plus a free HTTP port, the public URL devices use, and a known URL secret."""
    port = free_port()
    values = base.model_dump() | {
        "http_port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "url_secret": "test-url-secret",
    }
    return Settings(**(values | kw))


@contextlib.contextmanager
def serve_api(settings: Settings) -> Iterator[str]:
    """Run the app with uvicorn until the block ends; yields its base URL."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=settings.http_port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.http_port}"
    finally:
        server.should_exit = True
        thread.join(10)


class PrivateBroker:
    """A Mosquitto of the test's own on a free port, so the test may stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([mosquitto, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.port, timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def private_broker(workdir: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
