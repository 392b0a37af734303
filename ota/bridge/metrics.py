"""The bridge's metrics: its own tallies, read when Prometheus scrapes, and the few it bumps.

The bridge already counts what it does in `Bridge.stats` (one Counter its parts share). Rather
than a second count on the device path, `BridgeCollector` turns those tallies into metrics when
/metrics is asked for. What needs a label or a timing of its own (device reports by kind, flush
latency, task moves, reconnects) is declared in ota/metrics.py and bumped once per flush or
reconnect (service.py), never once per message.

Several bridges may live in one process (the tests; a process that builds a new bridge): the
collector sums the live ones and keeps what a bridge that is gone had counted, so no counter goes
backwards when a bridge is garbage-collected, and a second Bridge never registers twice.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ota import protocol
from ota.metrics import BROKER_RECONNECTS, DEVICE_REPORTS, TASK_TRANSITIONS

if TYPE_CHECKING:
    from ota.bridge.service import Bridge


@dataclass(frozen=True)
class Tally:
    """A counter read from `Bridge.stats`: one stats key, or one per value of `label`."""

    name: str
    help: str
    keys: dict[str, str]  # label value -> stats key; the label value is "" when `label` is ""
    label: str = ""


# Every label value is listed here, so each series exists (at 0) from the first scrape on and
# `rate()` sees its first increase.
TALLIES = (
    Tally(
        "ota_bridge_messages_received",
        "Device messages the bridge took from the broker (counted when flushed).",
        {"": "received"},
    ),
    Tally(
        "ota_bridge_messages_dropped",
        "Device messages acked without effect, by reason: rejected (malformed, or a version or "
        "module the API would refuse), retained (an old retained message replayed on "
        "subscribe), unknown_device (not registered), database_refused (the database refused "
        "it alone).",
        {
            "rejected": "rejected",
            "retained": "retained_ignored",
            "unknown_device": "unknown_device",
            "database_refused": "database_refused",
        },
        label="reason",
    ),
    Tally(
        "ota_bridge_flushes",
        "Batches of messages the bridge handled (written, answered, signalled, acked).",
        {"": "flushes"},
    ),
    Tally(
        "ota_bridge_transactions",
        "Database transactions of flushes (a flush of only dropped messages writes nothing).",
        {"": "transactions"},
    ),
    Tally(
        "ota_bridge_signals",
        "Signals to workflows after a flush, by outcome: sent, not_found (the workflow ended), "
        "error (refused for good), skipped (a bridge run without Temporal).",
        {
            "sent": "signals",
            "not_found": "signals_not_found",
            "error": "signal_errors",
            "skipped": "signals_skipped",
        },
        label="outcome",
    ),
    Tally(
        "ota_bridge_dynamic_nudges",
        "devices_arrived signals to dynamic batches: a device reported one of a batch's source "
        "versions (at most one per batch per flush and per second; also counted in signals).",
        {"": "nudges"},
    ),
    Tally(
        "ota_bridge_signal_retries",
        "Signals put off because Temporal was unreachable (each is tried again until it goes).",
        {"": "signal_retries"},
    ),
    Tally(
        "ota_bridge_signal_outages",
        "Times Temporal became unreachable for the bridge's signals (acks wait meanwhile).",
        {"": "signal_outages"},
    ),
    Tally(
        "ota_bridge_replies",
        "Answers to firmware/get, by outcome: sent, unsigned (a secure-update firmware that "
        "could not be signed: no answer).",
        {"sent": "replies", "unsigned": "replies_unsigned"},
        label="outcome",
    ),
    Tally(
        "ota_bridge_reading_paused",
        "Times the inbox filled and the bridge stopped reading (the broker holds the rest).",
        {"": "reading_paused"},
    ),
    Tally(
        "ota_bridge_reconciles",
        "Passes that pushed every task in flight again after the broker lost the bridge's "
        "session or restarted.",
        {"": "reconciles"},
    ),
    Tally(
        "ota_bridge_reconcile_pushes",
        "Pushes of reconciliation passes, by outcome: pushed, unsigned (skipped: the firmware "
        "could not be signed).",
        {"pushed": "reconcile_pushes", "unsigned": "reconcile_unsigned"},
        label="outcome",
    ),
    Tally(
        "ota_bridge_broker_restarts",
        "Broker restarts the bridge noticed by the broker's uptime.",
        {"": "broker_restarts"},
    ),
)
STATS_KEYS = tuple(key for t in TALLIES for key in t.keys.values())

# Bound once: `labels()` looks the child up under a lock on each call.
REPORTS_BY_KIND = {
    protocol.Inform: DEVICE_REPORTS.labels("inform"),
    protocol.Progress: DEVICE_REPORTS.labels("progress"),
    protocol.FirmwareGet: DEVICE_REPORTS.labels("firmware_get"),
    protocol.Status: DEVICE_REPORTS.labels("status"),
}
RECONNECTS = BROKER_RECONNECTS.labels("bridge")


def count_reports(kinds: Counter[type]) -> None:
    """A flush's parsed messages, by their class (service.py's `_parse` tallies them)."""
    for kind, n in kinds.items():
        REPORTS_BY_KIND[kind].inc(n)


def count_moves(moved: Counter[tuple[str, str]]) -> None:
    """Task moves a committed flush wrote, by (state, reason), from the statements' rowcounts."""
    for (state, reason), n in moved.items():
        if n:
            TASK_TRANSITIONS.labels(state, reason).inc(n)


@dataclass(frozen=True)
class _Tracked:
    bridge: weakref.ref[Bridge]
    stats: Counter[str]  # held here too: still readable when its bridge is gone


class BridgeCollector(Collector):
    """Reads the tallies of every Bridge `track`ed, at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes and `track` may come from different threads
        self._live: list[_Tracked] = []
        self._gone: Counter[str] = Counter()  # what bridges garbage-collected had counted
        self._gone_inbox_most = 0

    def track(self, bridge: Bridge) -> None:
        with self._lock:
            self._live.append(_Tracked(weakref.ref(bridge), bridge.stats))

    def collect(self) -> Iterator[Metric]:
        totals: Counter[str] = Counter()
        inbox_most = 0
        bridges: list[Bridge] = []
        with self._lock:
            live = []
            for t in self._live:
                bridge = t.bridge()
                # `get` reads one key at a time: a flush's thread may add keys meanwhile.
                counts = {key: t.stats.get(key, 0) for key in STATS_KEYS}
                most = t.stats.get("inbox_most", 0)
                if bridge is None:  # fold it in for good: its counters must not go down
                    self._gone.update(counts)
                    self._gone_inbox_most = max(self._gone_inbox_most, most)
                    continue
                live.append(t)
                bridges.append(bridge)
                totals.update(counts)
                inbox_most = max(inbox_most, most)
            self._live = live
            totals.update(self._gone)
            inbox_most = max(inbox_most, self._gone_inbox_most)
        yield from _counters(totals)
        yield from _gauges(bridges, inbox_most)


def _counters(totals: Counter[str]) -> Iterable[Metric]:
    for t in TALLIES:
        family = CounterMetricFamily(t.name, t.help, labels=[t.label] if t.label else None)
        for value, key in t.keys.items():
            family.add_metric([value] if t.label else [], totals[key])
        yield family


def _gauges(bridges: list[Bridge], inbox_most: int) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "ota_bridge_connected",
        "Bridges connected to the broker and subscribed (1 per bridge process while serving).",
        value=sum(b.ready.is_set() for b in bridges),
    )
    yield GaugeMetricFamily(
        "ota_bridge_inbox_messages",
        "Device messages received and waiting for their flush.",
        value=sum(b.inbox.waiting() for b in bridges if b.inbox is not None),
    )
    yield GaugeMetricFamily(
        "ota_bridge_inbox_limit",
        "Waiting messages at which the bridge stops reading from the broker.",
        value=sum(b.inbox.limit for b in bridges if b.inbox is not None),
    )
    yield GaugeMetricFamily(
        "ota_bridge_inbox_most",
        "The most device messages that waited at once since the bridge started.",
        value=inbox_most,
    )


COLLECTOR = BridgeCollector()
_registered: set[int] = set()  # ids of the registries COLLECTOR is in
_registering = threading.Lock()


def track(bridge: Bridge, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose `bridge`'s tallies in `registry` (the process's default one) from now on; the
    collector joins a registry with the first bridge, so a process without one shows none."""
    COLLECTOR.track(bridge)
    with _registering:
        if id(registry) in _registered:
            return
        _registered.add(id(registry))
        # Its names taken (by another collector of ours): those keep being served.
        with contextlib.suppress(ValueError):
            registry.register(COLLECTOR)
