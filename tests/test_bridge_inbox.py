"""The bridge's inbox against the real Mosquitto: a flood waits at the broker, not in memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ota import protocol
from ota.bridge import Bridge
from ota.bridge.inbox import Inbox
from ota.mqtt import MqttEndpoint
from tests.linkkit.seed import seed_fleet, versions
from tests.test_bridge import bridge_settings, publisher, running, until

LIMIT = 10


@contextlib.asynccontextmanager
async def subscribed(mqtt_url: str, topic: str) -> AsyncIterator[tuple[aiomqtt.Client, Inbox]]:
    """A client whose inbox holds LIMIT messages; the broker may send it 1,000 unacked."""
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 1000
    client = MqttEndpoint.from_url(mqtt_url).client(
        f"test-inbox-{uuid.uuid4().hex[:8]}", properties=props
    )
    client._client.manual_ack_set(True)
    inbox = Inbox(client, LIMIT, Counter())
    async with client:
        await client.subscribe(topic, qos=1)
        inbox.watch()
        try:
            yield client, inbox
        finally:
            inbox.close()


async def publish(mqtt_url: str, topic: str, count: int) -> None:
    async with publisher(mqtt_url) as pub:
        for i in range(count):
            await pub.publish(topic, str(i).encode(), qos=1)


async def test_a_full_inbox_stops_reading_and_loses_nothing(mqtt_url):
    topic = f"test/inbox/{uuid.uuid4().hex}"
    async with subscribed(mqtt_url, topic) as (client, inbox):
        await publish(mqtt_url, topic, 200)
        await asyncio.sleep(0.5)  # unread, the broker would have sent all 200 by now
        assert inbox.stats["inbox_most"] == LIMIT
        assert inbox.stats["reading_paused"] == 1

        payloads: list[bytes] = []
        while len(payloads) < 200:
            batch = await asyncio.wait_for(inbox.next_batch(7, 0.05), 5)
            assert len(batch) <= 7
            payloads += [m.payload for m in batch]
            inbox.ack(batch)
    assert payloads == [str(i).encode() for i in range(200)]  # none lost, in order
    assert inbox.stats["inbox_most"] == LIMIT


async def test_a_full_inbox_still_reads_the_acks_of_its_own_publishes(mqtt_url):
    topic = f"test/inbox/{uuid.uuid4().hex}"
    async with subscribed(mqtt_url, topic) as (client, inbox):
        await publish(mqtt_url, topic, 50)
        await until(lambda: inbox.stats["reading_paused"] == 1, 5, "a full inbox")
        async with inbox.reading():  # the PUBACK comes in on the paused socket
            await asyncio.wait_for(client.publish(f"{topic}/reply", b"x", qos=1), 5)
        # Reading again, and the inbox took more than its limit meanwhile: paused again.
        await until(lambda: inbox.stats["reading_paused"] == 2, 5, "paused again")


async def test_a_flood_larger_than_the_inbox_is_recorded_whole(sqlite_engine, mqtt_url, tmp_path):
    """Batches of 20, so the inbox holds 40: 400 reports from 20 publishers at once."""
    fleet = seed_fleet(sqlite_engine, 400, task_state=None)
    pk, names = fleet.product_key, fleet.names

    class SlowBridge(Bridge):
        def _apply(self, messages):  # type: ignore[no-untyped-def]
            time.sleep(0.05)  # a busy database: the flood outruns the flushes
            return super()._apply(messages)

    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = SlowBridge(
        settings, sqlite_engine, None, max_batch=20, session_expiry=60, products=[pk]
    )

    async def report(chunk: list[str]) -> None:
        async with publisher(mqtt_url) as pub:
            for dn in chunk:
                await pub.publish(
                    protocol.inform_topic(pk, dn), protocol.encode_inform("1", "1.5.0"), 1
                )

    async with running(bridge):
        await asyncio.gather(*(report(names[i::20]) for i in range(20)))
        await until(lambda: versions(sqlite_engine, pk) == dict.fromkeys(names, "1.5.0"), 60)
    assert bridge.stats["inbox_most"] <= 40, bridge.stats
    assert bridge.stats["received"] == 400 and bridge.stats["flushes"] >= 20, bridge.stats
