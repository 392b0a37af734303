"""A pure-Python MQTT 3.1.1 broker (amqtt): `ota dev` falls back to it where Mosquitto is absent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from amqtt.broker import Broker

from ota.shutdown import stop_on_signals


async def serve(host: str, port: int) -> None:
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    stop_on_signals()
    host, port = sys.argv[1], int(sys.argv[2])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port))


if __name__ == "__main__":
    main()
