"""A pure-Python MQTT 3.1.1 broker (amqtt) for machines without Mosquitto: `ota dev` falls back to it."""

from __future__ import annotations

import asyncio
import logging
import sys

from amqtt.broker import Broker


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
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        asyncio.run(serve(host, port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
