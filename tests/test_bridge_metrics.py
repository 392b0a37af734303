"""Issue 14: the bridge's metrics, read from prometheus_client's default registry (what /metrics
serves) while a real bridge takes real device messages from Mosquitto and writes the database."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import Engine, text, update

from ota import protocol
from ota.bridge import Bridge
from ota.db.models import Task
from ota.mqtt import MqttEndpoint
from tests.linkkit.seed import new_pk, seed_fleet, tasks
from tests.test_bridge import Recorder, bridge_settings, publisher, running, until

# A short name for each series a test watches: (metric sample name, labels).
SERIES: dict[str, tuple[str, dict[str, str]]] = {
    "received": ("ota_bridge_messages_received_total", {}),
    **{
        f"dropped_{reason}": ("ota_bridge_messages_dropped_total", {"reason": reason})
        for reason in ("rejected", "retained", "unknown_device", "database_refused")
    },
    **{
        f"reports_{kind}": ("ota_device_reports_total", {"kind": kind})
        for kind in ("inform", "progress", "firmware_get", "status")
    },
    **{
        f"signals_{outcome}": ("ota_bridge_signals_total", {"outcome": outcome})
        for outcome in ("sent", "not_found", "error", "skipped")
    },
    "replies_sent": ("ota_bridge_replies_total", {"outcome": "sent"}),
    "replies_unsigned": ("ota_bridge_replies_total", {"outcome": "unsigned"}),
    "moved_in_upgrade": ("ota_task_transitions_total", {"state": "in_upgrade", "reason": ""}),
    "moved_updated": ("ota_task_transitions_total", {"state": "updated", "reason": ""}),
    "reconnects": ("ota_broker_reconnects_total", {"component": "bridge"}),
    "reading_paused": ("ota_bridge_reading_paused_total", {}),
    "signal_retries": ("ota_bridge_signal_retries_total", {}),
}
# How many flushes ran depends on timing: checked against each other, not against a number.
FLUSH_SERIES = {
    "flushes": ("ota_bridge_flushes_total", {}),
    "transactions": ("ota_bridge_transactions_total", {}),
    "flush_timings": ("ota_bridge_flush_seconds_count", {}),
}


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample as /metrics shows it; a labelled series not created yet counts 0."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class Moves:
    """How the watched series moved since this was made (or since `reset`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        return {key: value(*series) for key, series in (SERIES | FLUSH_SERIES).items()}

    def all(self) -> dict[str, float]:
        now = self._read()
        return {k: now[k] - self._start[k] for k in now}

    def changed(self) -> dict[str, float]:
        """The non-zero moves, without the flush counts."""
        return {k: v for k, v in self.all().items() if v and k not in FLUSH_SERIES}

    async def reach(self, expected: dict[str, float]) -> None:
        """Wait until the moves include `expected`, then a while longer: nothing else moved
        (an extra count or a double count would show here)."""
        await until(
            lambda: all(self.all()[k] >= v for k, v in expected.items()),
            what=f"metrics {expected}, have {self.changed()}",
        )
        await asyncio.sleep(0.6)  # three flush intervals: any late count lands before the check
        assert self.changed() == expected
        flushes = self.all()
        assert flushes["flushes"] >= 1
        assert flushes["flush_timings"] == flushes["flushes"]  # each flush timed once
        assert flushes["transactions"] <= flushes["flushes"]


async def test_device_messages_are_counted_by_outcome_kind_and_task_move(
    engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(engine, 2)  # tasks `pushed` to 2.0.0, in a running batch
    pk, (a, b) = fleet.product_key, fleet.names
    stranger = new_pk()
    recorder = Recorder()
    bridge = Bridge(bridge_settings(tmp_path, mqtt_url), engine, recorder, products=[pk, stranger])
    moves = Moves()
    async with running(bridge), publisher(mqtt_url) as client:
        # Garbage, a stranger, a first progress (pushed -> in_upgrade) and a firmware/get.
        await client.publish(protocol.inform_topic(pk, a), b"{garbage", qos=1)
        await client.publish(
            protocol.inform_topic(stranger, "nobody"), protocol.encode_inform("1", "1.0.0"), 1
        )
        await client.publish(protocol.progress_topic(pk, a), protocol.encode_progress("2", 50), 1)
        await client.publish(protocol.firmware_get_topic(pk, b), protocol.encode_firmware_get("3"))
        await moves.reach(
            {
                "received": 4,
                "dropped_rejected": 1,
                "dropped_unknown_device": 1,
                "reports_inform": 1,  # the stranger's: parsed, then unknown to the database
                "reports_progress": 1,
                "reports_firmware_get": 1,
                "moved_in_upgrade": 1,
                "replies_sent": 1,
            }
        )
        assert tasks(engine, fleet.batch_id)[a].state == "in_upgrade"

        # The target version: in_upgrade -> updated, and its report signalled.
        moves.reset()
        await client.publish(protocol.inform_topic(pk, a), protocol.encode_inform("4", "2.0.0"), 1)
        await moves.reach(
            {"received": 1, "reports_inform": 1, "moved_updated": 1, "signals_sent": 1}
        )

        # The same report again (as a redelivery would bring it): signalled again, yet the
        # statement changes no row, so no task moved.
        moves.reset()
        await client.publish(protocol.inform_topic(pk, a), protocol.encode_inform("5", "2.0.0"), 1)
        await moves.reach({"received": 1, "reports_inform": 1, "signals_sent": 1})
    assert tasks(engine, fleet.batch_id)[a].state == "updated"
    assert [s[1] for s in recorder.signals] == ["report", "report"]


async def test_a_task_moved_meanwhile_by_the_worker_is_not_counted_by_the_bridge(
    engine, mqtt_url, tmp_path
):
    """Task moves are counted from the rows the guarded statements changed, not from the
    reports: here the task is canceled (as the worker would) after the bridge read it as pushed
    and before its `updated` write, which then changes no row. PostgreSQL's row lock holds the
    bridge's write until the cancel commits, then its guard (pushed or in_upgrade) fails."""
    if engine.dialect.name != "postgresql":
        pytest.skip("needs a row lock that holds a concurrent writer: PostgreSQL")
    fleet = seed_fleet(engine, 1)
    pk, dn = fleet.product_key, fleet.names[0]
    bridge = Bridge(bridge_settings(tmp_path, mqtt_url), engine, Recorder(), products=[pk])
    moves = Moves()
    async with running(bridge), publisher(mqtt_url) as client:
        with engine.connect() as worker:
            worker.execute(
                update(Task).where(Task.batch_id == fleet.batch_id).values(state="canceled")
            )
            await client.publish(
                protocol.inform_topic(pk, dn), protocol.encode_inform("1", "2.0.0")
            )
            await until(lambda: waiting_for_a_lock(engine), what="the bridge's write waiting")
            worker.commit()
        await moves.reach({"received": 1, "reports_inform": 1, "signals_sent": 1})
    assert tasks(engine, fleet.batch_id)[dn].state == "canceled"


def waiting_for_a_lock(engine: Engine) -> bool:
    """Whether a session of this test's database waits for a lock to update the tasks."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE tasks%'"
    )
    with engine.connect() as conn:
        return bool(conn.execute(query).scalar())


async def test_signals_without_temporal_are_counted_as_skipped(sqlite_engine, mqtt_url, tmp_path):
    fleet = seed_fleet(sqlite_engine, 1)
    pk, dn = fleet.product_key, fleet.names[0]
    bridge = Bridge(bridge_settings(tmp_path, mqtt_url), sqlite_engine, None, products=[pk])
    moves = Moves()
    async with running(bridge), publisher(mqtt_url) as client:
        await client.publish(protocol.inform_topic(pk, dn), protocol.encode_inform("1", "2.0.0"), 1)
        await moves.reach(
            {"received": 1, "reports_inform": 1, "moved_updated": 1, "signals_skipped": 1}
        )


async def test_retained_messages_are_counted_as_dropped(sqlite_engine, mqtt_url, tmp_path):
    """MQTT 3.1.1 cannot ask the broker to keep retained messages back: the bridge skips them."""
    fleet = seed_fleet(sqlite_engine, 1, task_state=None)
    pk, dn = fleet.product_key, fleet.names[0]
    settings = bridge_settings(tmp_path, mqtt_url, mqtt_protocol="3.1.1")
    moves = Moves()
    try:
        async with publisher(mqtt_url) as client:
            await client.publish(protocol.status_topic(pk, dn), b"online", qos=1, retain=True)
        async with running(Bridge(settings, sqlite_engine, None, products=[pk])):
            await moves.reach({"received": 1, "dropped_retained": 1})
    finally:
        async with publisher(mqtt_url) as client:  # leave no retained message behind
            await client.publish(protocol.status_topic(pk, dn), b"", qos=1, retain=True)


async def test_the_inbox_gauges_show_messages_waiting_for_their_flush(
    sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 1, task_state=None)
    pk, dn = fleet.product_key, fleet.names[0]
    # Messages wait in the inbox for the flush interval after the first of them.
    settings = bridge_settings(tmp_path, mqtt_url, bridge_flush_seconds=2.0)
    bridge = Bridge(settings, sqlite_engine, None, max_batch=50, products=[pk])
    assert value("ota_bridge_inbox_limit") == 0  # no bridge connected: no inbox
    async with running(bridge), publisher(mqtt_url) as client:
        assert value("ota_bridge_inbox_limit") == 100  # 2 batches of 50
        assert value("ota_bridge_connected") == 1
        for _ in range(3):
            await client.publish(protocol.status_topic(pk, dn), b"online", qos=1)
        await until(lambda: value("ota_bridge_inbox_messages") == 3, what="3 messages waiting")
        assert value("ota_bridge_inbox_most") >= 3
        await until(lambda: value("ota_bridge_inbox_messages") == 0, what="the flush")
        await until(lambda: bridge.stats["flushes"] == 1)
    assert bridge.stats["received"] == 3
    assert value("ota_bridge_connected") == 0  # stopped: neither connected nor holding an inbox
    assert value("ota_bridge_inbox_limit") == 0


async def test_a_reconnect_is_counted(sqlite_engine, mqtt_url, tmp_path):
    """Another client taking the bridge's client id makes the broker drop the bridge's
    connection, as a broker restart or a network cut would: the bridge connects again."""
    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = Bridge(settings, sqlite_engine, None, products=[new_pk()])
    moves = Moves()
    async with running(bridge):
        async with MqttEndpoint.from_url(mqtt_url).client(settings.bridge_client_id):
            await until(lambda: not bridge.ready.is_set(), what="the bridge dropped")
            assert value("ota_bridge_connected") == 0
        await asyncio.wait_for(bridge.ready.wait(), 10)
        assert value("ota_bridge_connected") == 1
        assert moves.changed() == {"reconnects": 1}


async def test_several_bridges_register_once_and_a_gone_one_keeps_its_counts(
    sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 1, task_state=None)
    pk, dn = fleet.product_key, fleet.names[0]
    moves = Moves()
    first = Bridge(bridge_settings(tmp_path, mqtt_url), sqlite_engine, None, products=[pk])
    second = Bridge(bridge_settings(tmp_path, mqtt_url), sqlite_engine, None, products=[pk])
    async with running(first), running(second), publisher(mqtt_url) as client:
        assert value("ota_bridge_connected") == 2
        for _ in range(4):  # each bridge has a share group of its own: both get every message
            await client.publish(protocol.inform_topic(pk, dn), b"{garbage", qos=1)
        await moves.reach({"received": 8, "dropped_rejected": 8})
    assert first.stats["received"] == second.stats["received"] == 4

    gone = weakref.ref(first)
    del first
    await asyncio.sleep(0.1)  # the loop lets go of the cancelled run's last callbacks
    gc.collect()
    assert gone() is None, "the test needs the bridge garbage-collected"
    # A counter never goes down: Prometheus would read a drop as a restart and count it again.
    assert moves.changed() == {"received": 8, "dropped_rejected": 8}

    exposed = generate_latest(REGISTRY).decode()
    assert exposed.count("# TYPE ota_bridge_messages_received_total counter") == 1
    assert pk not in exposed and dn not in exposed  # no label names a device
    del second
