"""The fleet's gauges: batches by state, and the tasks of each open batch, read from the
database when Prometheus scrapes the API.

The database already holds these figures (what `ota batch show` counts), so nothing on the
device path counts them: a scrape runs three small queries (batches by state and kind, the open
batches, their tasks grouped by batch, state and reason; the last by the tasks' batch index) and
keeps the answer a few seconds, so several Prometheus servers scraping several API processes do
not multiply the load. Never a query per batch or per device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from ota.db.models import Batch, Task
from ota.domain import OPEN_BATCH_STATES, BatchKind, BatchState, TaskState

log = logging.getLogger(__name__)

# Long enough that scrapers in step cost one read, short next to a 15 s scrape interval.
FLEET_TTL_SECONDS = 5.0
_OPEN = [s.value for s in OPEN_BATCH_STATES]


@dataclass
class FleetFigures:
    """One read of the database: what the gauges show until the next."""

    batches: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, kind) -> n
    open_batches: dict[str, str] = field(default_factory=dict)  # batch id -> product key
    stop_at: dict[str, int] = field(default_factory=dict)  # batch id -> its stop rule's percent
    rate: dict[str, int] = field(default_factory=dict)  # batch id -> its pushes a minute
    tasks: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (id, state, reason)


def read_fleet(engine: Engine) -> FleetFigures:
    figures = FleetFigures()
    with Session(engine) as session:
        rows = session.exec(
            select(Batch.state, Batch.kind, func.count()).group_by(Batch.state, Batch.kind)
        )
        figures.batches = {(state, kind): n for state, kind, n in rows}
        open_rows = session.exec(
            select(Batch.id, Batch.product_key, Batch.options, Batch.rate_per_minute).where(
                col(Batch.state).in_(_OPEN)
            )
        ).all()
        figures.open_batches = {batch_id: product for batch_id, product, _, _ in open_rows}
        for batch_id, _, options, rate in open_rows:
            if (options or {}).get("stop_at") is not None:
                figures.stop_at[batch_id] = int(options["stop_at"])
            if rate:
                figures.rate[batch_id] = rate
        if figures.open_batches:
            # What `ota batch show` counts (services.batches.batch_counts), for every open batch
            # at once; the reason too, which the tasks' (batch_id, state) index already narrows.
            task_rows = session.exec(
                select(Task.batch_id, Task.state, Task.reason, func.count())
                .where(col(Task.batch_id).in_(list(figures.open_batches)))
                .group_by(col(Task.batch_id), col(Task.state), col(Task.reason))
            )
            figures.tasks = {(b, s, r or ""): n for b, s, r, n in task_rows}
    return figures


class FleetCollector(Collector):
    """Registered in one API app's registry (ota/api/metrics_route.py), reading that app's
    database: an app per test, each with its own database, never sees another's."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        ttl: float = FLEET_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine  # a callable: the app opens its database on first use
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()  # scrapes run in the server's threads
        self._read_at: float | None = None
        self._figures: FleetFigures | None = None

    def figures(self) -> FleetFigures | None:
        """The latest read, refreshed when older than the TTL; None while the database fails
        (the gauges are then absent rather than stale; the failure is logged once per TTL)."""
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.ttl:
                try:
                    self._figures = read_fleet(self.engine())
                except Exception as exc:
                    log.warning("fleet metrics: cannot read the database: %s", exc)
                    self._figures = None
                self._read_at = now
            return self._figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        if figures is None:
            return
        yield from fleet_families(figures)


def fleet_families(figures: FleetFigures) -> Iterator[Metric]:
    """Every known state and kind, zeros included, so a PromQL ratio or alert never meets a
    missing series; reasons only where some task has one."""
    batches = GaugeMetricFamily(
        "ota_batches",
        "Batches by state (scheduled, in_progress, paused, completed, canceled, failed) and kind.",
        labels=["state", "kind"],
    )
    for batch_state in BatchState:
        for kind in BatchKind:
            n = figures.batches.get((batch_state, kind), 0)
            batches.add_metric([batch_state, kind], n)
    yield batches
    yield GaugeMetricFamily(
        "ota_active_batches",
        "Batches not over: scheduled, in progress or paused.",
        value=len(figures.open_batches),
    )
    by_state: dict[tuple[str, str], int] = {}
    reasons = GaugeMetricFamily(
        "ota_batch_tasks_reason",
        "Tasks of each open batch that have a reason (offline, rate_limited, timeout, ...), by "
        "state and reason.",
        labels=["batch_id", "state", "reason"],
    )
    for (batch_id, state, reason), n in sorted(figures.tasks.items()):
        by_state[batch_id, state] = by_state.get((batch_id, state), 0) + n
        if reason:
            reasons.add_metric([batch_id, state, reason], n)
    tasks = GaugeMetricFamily(
        "ota_batch_tasks",
        "Tasks of each open batch by state, as `ota batch show` counts them; a batch leaves "
        "this gauge when it completes or is canceled.",
        labels=["batch_id", "product", "state"],
    )
    for batch_id, product in sorted(figures.open_batches.items()):
        for task_state in TaskState:
            n = by_state.get((batch_id, task_state), 0)
            tasks.add_metric([batch_id, product, task_state], n)
    yield tasks
    yield reasons
    yield _per_batch(
        "ota_batch_stop_at_percent",
        "The stop rule of each open batch that has one: the failure rate (percent of executed "
        "devices) at which it stops pushing; what deploy/prometheus/alerts.yml compares with.",
        figures.stop_at,
    )
    yield _per_batch(
        "ota_batch_rate_per_minute",
        "The push rate each open batch was given (devices a minute), for batches that have one: "
        "what the pushes' rate is drawn against on the dashboard.",
        figures.rate,
    )


def _per_batch(name: str, help_text: str, values: dict[str, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, help_text, labels=["batch_id"])
    for batch_id, value in sorted(values.items()):
        gauge.add_metric([batch_id], value)
    return gauge
