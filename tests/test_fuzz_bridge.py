"""Fuzzing the bridge on the real Mosquitto: thousands of malformed messages on every device topic
while well-behaved devices go through an update. The bridge must never stop, count every bad
message, write nothing for them, and record the good devices' update.

The messages come from Hypothesis strategies (tests/fuzz_traffic.py): a pool of payloads and device
names drawn with a fixed seed, spread over topics by a seeded `random`, so CI time is predictable.
A longer run: `OTA_FUZZ_MESSAGES=20000 OTA_FUZZ_SEED=$RANDOM pytest tests/test_fuzz_bridge.py -s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from ota import protocol
from ota.bridge import Bridge
from ota.bridge.service import MAX_PACKET_BYTES
from ota.contracts import device_workflow_id
from ota.db.models import Device, DeviceModule, Task
from tests.fuzz_traffic import (
    KINDS,
    TOPIC_OF,
    broker_safe_names,
    encode,
    malformed,
    near_misses,
    valid_bodies,
)
from tests.linkkit.seed import seed_fleet, tasks
from tests.test_bridge import Recorder, bridge_settings, publisher, until

MESSAGES = int(os.environ.get("OTA_FUZZ_MESSAGES", "3000"))
SEED = int(os.environ.get("OTA_FUZZ_SEED", "17"))
GOOD_DEVICES = 20
PUBLISHERS = 4
TARGET = "2.0.0"


def draw_many(strategy: st.SearchStrategy, n: int, at: int) -> list:
    """n examples of a strategy, the same ones for the same seed."""
    found: list = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(at)
    @given(strategy)
    def collect(example: object) -> None:
        found.append(example)

    collect()
    return found


@dataclass
class Traffic:
    """What the fuzz sends, and what the bridge must make of it."""

    messages: list[tuple[str, bytes]] = field(repr=False)  # (topic, payload), in sending order
    delivered: int = 0  # the bridge's subscriptions match it and it fits the packet limit
    rejected: int = 0  # protocol.parse refuses it
    unknown: int = 0  # well formed, from a device nobody registered


def make_traffic(pk: str, victim: str, good: list[str], n: int, rng: random.Random) -> Traffic:
    pool = max(60, n // 15)
    per_kind = pool // len(KINDS) + 1
    bad = {k: fitting(draw_many(malformed(k), per_kind, SEED + i)) for i, k in enumerate(KINDS)}
    json_kinds = [k for k in KINDS if k != protocol.BIRTH]
    well_formed = draw_many(
        st.sampled_from(json_kinds).flatmap(lambda k: st.tuples(st.just(k), valid_bodies(k))),
        pool // 3,
        SEED,
    )
    strangers = draw_many(broker_safe_names, 40, SEED) + [f"ghost-{i}" for i in range(5)]

    def any_bad() -> tuple[str, bytes]:
        kind = rng.choice(KINDS)
        return kind, rng.choice(bad[kind])

    messages: list[tuple[str, bytes]] = []
    for kind, payload in near_misses(TARGET):  # each real device gets all of these
        messages += [(TOPIC_OF[kind](pk, dn), payload) for dn in (victim, *good)]
    while len(messages) < n:
        roll = rng.random()
        if roll < 0.25:  # the real device with a task in flight
            kind, payload = any_bad()
            messages.append((TOPIC_OF[kind](pk, victim), payload))
        elif roll < 0.35:  # the devices that are updating
            kind, payload = any_bad()
            messages.append((TOPIC_OF[kind](pk, rng.choice(good)), payload))
        elif roll < 0.90:  # strangers, with garbage and with well-formed reports
            kind, payload = rng.choice(well_formed) if rng.random() < 0.3 else any_bad()
            payload = payload if isinstance(payload, bytes) else encode(payload)
            messages.append((TOPIC_OF[kind](pk, rng.choice(strangers)), payload))
        elif roll < 0.97:  # matched by the subscription, but not a device topic
            topic = rng.choice([f"/ota/device/inform/{pk}/", f"/sys/{pk}//thing/ota/firmware/get"])
            messages.append((topic, any_bad()[1]))
        elif roll < 0.995:  # not matched at all: the platform's own topics, an extra level
            topic = rng.choice(
                [
                    protocol.upgrade_topic(pk, victim),
                    protocol.firmware_get_topic(pk, victim) + "/extra",
                    protocol.inform_topic(pk, victim) + "/extra",
                ]
            )
            messages.append((topic, encode({"params": {"version": TARGET}})))
        else:  # more than the bridge's packet limit: the broker drops it for the bridge
            oversized = b'{"params":{"version":"2.0.0"},"x":"' + b"x" * MAX_PACKET_BYTES + b'"}'
            messages.append((protocol.inform_topic(pk, victim), oversized))
    rng.shuffle(messages)

    traffic = Traffic(messages)
    subscribed = {f.replace("+", pk, 1) for f in protocol.DEVICE_TOPIC_FILTERS.values()}
    for topic, payload in messages:
        if len(payload) > MAX_PACKET_BYTES or not any(matches(f, topic) for f in subscribed):
            continue
        traffic.delivered += 1
        msg = protocol.parse(topic, payload)
        if isinstance(msg, protocol.Rejected):
            traffic.rejected += 1
        else:
            assert msg.device_name not in (victim, *good), (topic, payload)  # not malformed
            traffic.unknown += 1
    return traffic


def fitting(payloads: list[bytes]) -> list[bytes]:
    """Payloads well under the bridge's packet limit with any topic (names are up to 5,000
    characters): a deep JSON of 30,000 levels is too big to be delivered, and counted apart."""
    return [p for p in payloads if len(p) < MAX_PACKET_BYTES - 16 * 1024]


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT's `+` matching, enough for the bridge's filters."""
    want, got = topic_filter.split("/"), topic.split("/")
    return len(want) == len(got) and all(w in ("+", g) for w, g in zip(want, got, strict=True))


async def publish_all(mqtt_url: str, messages: list[tuple[str, bytes]]) -> None:
    async def one(part: list[tuple[str, bytes]]) -> None:
        async with publisher(mqtt_url) as pub:
            for i, (topic, payload) in enumerate(part):
                await pub.publish(topic, payload, qos=2 if i % 10 == 0 else 1, timeout=10)

    await asyncio.gather(*(one(messages[i::PUBLISHERS]) for i in range(PUBLISHERS)))


async def update_good_devices(mqtt_url: str, pk: str, good: list[str]) -> None:
    """What a device on Alibaba's SDK does during an update, with fields of its own added."""
    extra = {"version": "1.0", "method": "thing.ota", "sdk": {"lang": "C", "v": "3.0.1"}}
    async with publisher(mqtt_url) as pub:
        for dn in good:
            await pub.publish(protocol.status_topic(pk, dn), b"online", qos=1)
            await pub.publish(protocol.firmware_get_topic(pk, dn), encode({"id": 5} | extra), 1)
        for step in (10, 50, 100):
            for dn in good:
                body = {"id": step, "params": {"step": str(step), "desc": "", "x": 1}} | extra
                await pub.publish(protocol.progress_topic(pk, dn), encode(body), qos=1)
            await asyncio.sleep(0.2)  # interleaved with the fuzz, across several flushes
        for dn in good:
            body = {"id": "9", "params": {"version": TARGET, "extra": [1, {"a": None}]}} | extra
            await pub.publish(protocol.inform_topic(pk, dn), encode(body), qos=1)


def device_state(engine: Engine, pk: str) -> dict[str, list[tuple]]:
    """Every device row of the product and its modules, to compare before and after."""
    state: dict[str, list[tuple]] = {}
    with Session(engine) as s:
        rows = s.execute(
            select(
                Device.name,
                Device.online,
                Device.last_seen,
                DeviceModule.module,
                DeviceModule.version,
                DeviceModule.reported_at,
            )
            .join(DeviceModule, DeviceModule.device_id == Device.id, isouter=True)
            .where(Device.product_key == pk)
            .order_by(Device.name, DeviceModule.module)
        )
        for name, *fields in rows:
            state.setdefault(name, []).append(tuple(fields))
    return state


@pytest.mark.slow
async def test_malformed_traffic_is_counted_and_changes_nothing_while_an_update_runs(
    engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(engine, GOOD_DEVICES + 1, target=TARGET)
    pk, (victim, *good) = fleet.product_key, fleet.names
    traffic = make_traffic(pk, victim, good, MESSAGES, random.Random(SEED))
    before_tasks, before_devices = tasks(engine, fleet.batch_id), device_state(engine, pk)
    with Session(engine) as s:
        device_rows = s.scalar(select(func.count()).select_from(Device))
    internal_before = sum(n for r, n in protocol.REJECTED.items() if r.startswith("internal"))

    recorder = Recorder()
    bridge = Bridge(bridge_settings(tmp_path, mqtt_url), engine, recorder, products=[pk])
    replies: Counter[str] = Counter()
    reply_versions: set[str | None] = set()
    started = time.monotonic()
    async with serving(bridge) as serve, publisher(mqtt_url) as listener:
        await listener.subscribe(protocol.firmware_get_reply_topic(pk, "+"), qos=1)

        async def listen() -> None:
            async for m in listener.messages:
                replies[str(m.topic).split("/")[3]] += 1
                reply_versions.add(json.loads(m.payload)["data"].get("version"))

        listening = asyncio.create_task(listen())
        await asyncio.gather(
            publish_all(mqtt_url, traffic.messages), update_good_devices(mqtt_url, pk, good)
        )
        expected = traffic.delivered + len(good) * 6  # each good device sent 6 messages
        await until(
            lambda: bridge.stats["received"] >= expected, 60, f"{expected} received: {bridge.stats}"
        )
        await until(lambda: sum(replies.values()) >= len(good), 10, "replies to the good devices")
        await asyncio.sleep(0.5)  # anything more (a duplicate, a stray reply) shows up by now
        listening.cancel()
        assert not serve.done(), serve  # the bridge never stopped
    elapsed = time.monotonic() - started
    stats = bridge.stats
    print(f"\n{len(traffic.messages)} fuzz messages in {elapsed:.1f}s: {traffic}; {dict(stats)}")

    # The bridge never stopped: no reconnect, no batch the database refused.
    assert stats["reconnects"] == 0 and stats["errors"] == 0, stats
    assert stats["received"] == expected, stats
    # Every malformed message counted: rejected when parsed, or from a device nobody registered.
    assert stats["rejected"] == traffic.rejected, (stats, traffic)
    assert stats["unknown_device"] == traffic.unknown, (stats, traffic)
    internal = sum(n for r, n in protocol.REJECTED.items() if r.startswith("internal"))
    assert internal == internal_before, protocol.REJECTED

    # The update went through for the good devices, and nothing else was signalled.
    after = tasks(engine, fleet.batch_id)
    assert {dn: after[dn].state for dn in good} == dict.fromkeys(good, "updated")
    assert sorted(s[0] for s in recorder.reports) == sorted(
        device_workflow_id(pk, dn) for dn in good
    ), recorder.reports
    assert all(s[2].outcome == "updated" for s in recorder.reports), recorder.reports
    # firmware/get answered for the good devices only, with their pending update.
    assert replies == Counter(dict.fromkeys(good, 1)) and reply_versions == {TARGET}, replies

    # Nothing written for the malformed messages: the victim's task and device untouched,
    # no device row created for a stranger.
    assert snapshot(after[victim]) == snapshot(before_tasks[victim])
    assert device_state(engine, pk)[victim] == before_devices[victim]
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Device)) == device_rows


@contextlib.asynccontextmanager
async def serving(bridge: Bridge) -> AsyncIterator[asyncio.Task[None]]:
    """tests.test_bridge.running, handing out the bridge's task to check it is still alive."""
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.ready.wait(), 10)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def snapshot(task: Task) -> dict:
    return task.model_dump(exclude={"id"})
