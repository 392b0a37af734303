"""The Mosquitto `ota dev` starts keeps what it holds across a crash, not only a clean stop."""

from __future__ import annotations

import asyncio
import signal

from ota.devstack import AUTOSAVE_SECONDS, mosquitto_conf
from ota.mqtt import MqttEndpoint
from tests.fixtures.mqtt import start_mosquitto
from tests.fixtures.net import free_port


async def test_a_queued_message_survives_a_broker_killed_after_its_autosave(tmp_path):
    port = free_port()
    mosquitto_conf(tmp_path, "127.0.0.1", port)  # no settings: anonymous, as in this test
    broker = start_mosquitto(tmp_path, port)
    endpoint = MqttEndpoint.from_url(f"mqtt://127.0.0.1:{port}")
    try:
        async with endpoint.client("bridge-like", persistent=True, session_expiry=600) as c:
            await c.subscribe("reports/#", qos=1)
        async with endpoint.client(None) as device:  # reports while the subscriber is away
            await device.publish("reports/dev1", b"100%", qos=1)
        await asyncio.sleep(AUTOSAVE_SECONDS + 2)
        broker.send_signal(signal.SIGKILL)  # a crash: no save on the way out
        broker.wait()
        broker = start_mosquitto(tmp_path, port)
        async with endpoint.client("bridge-like", persistent=True, session_expiry=600) as c:
            message = await asyncio.wait_for(anext(aiter(c.messages)), 10)
        assert (message.topic.value, message.payload) == ("reports/dev1", b"100%")
    finally:
        broker.kill()
        broker.wait()
