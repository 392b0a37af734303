"""Our SDK reconnecting in the middle of an update (a broker restart) does not report its old
version on connect: the seed reads an old version from a device in upgrade as a failed update."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ota import protocol
from ota.context import Context
from ota.device.sdk import Device
from ota.push import upgrade_data
from ota.settings import Settings
from tests.linkkit.seed import seed_fleet
from tests.linkkit.servers import api_settings, private_broker, serve_api
from tests.test_bridge import publisher, until
from tests.test_device_sdk import online, watching


async def test_a_reconnect_mid_update_reports_no_old_version(tmp_path: Path):
    settings = api_settings(Settings(home=tmp_path))
    ctx = Context(settings)
    fleet = seed_fleet(ctx.engine, 1, content=os.urandom(64 * 1024), store=ctx.store)
    pk, dn = fleet.product_key, fleet.names[0]
    release = asyncio.Event()

    async def install(path, upgrade) -> None:  # type: ignore[no-untyped-def]
        await release.wait()  # flashing takes a while: the broker restarts meanwhile

    with serve_api(settings), private_broker(tmp_path) as broker:
        data = upgrade_data(settings, fleet.firmware, pk, dn)
        device = Device(pk, dn, mqtt_url=broker.url, versions="1.0.0", install=install,
                        download_dir=tmp_path)  # fmt: skip
        async with online(device):
            async with publisher(broker.url) as client:
                await client.publish(
                    protocol.upgrade_topic(pk, dn), protocol.encode_upgrade(data, 1), qos=1
                )
            await until(lambda: "default" in device._updates, what="the update running")
            broker.stop()
            await until(lambda: not device.connected.is_set(), what="the device noticing")
            broker.start()
            async with watching(broker.url, protocol.inform_topic(pk, dn)) as informs:
                await asyncio.wait_for(device.connected.wait(), 20)
                await asyncio.sleep(0.5)
                assert informs == [], "no version while the update runs"
                release.set()
                await until(lambda: len(informs) == 1, what="the result's report")
            assert b'"version": "2.0.0"' in informs[0]
        assert device.stats["connects"] == 2
    ctx.engine.dispose()
