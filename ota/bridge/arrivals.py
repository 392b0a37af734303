"""Nudges for dynamic batches: a device that reports a version an open dynamic batch updates
from, and has no task in it, makes the bridge signal that batch (`devices_arrived`), once per
flush however many such devices the flush holds, and at most once a second (a nudge due sooner
waits for its second: the bridge sends it then, flush or not). The batch then looks for new
devices at once instead of at its next poll (workflows/batch_arrivals.py); the poll stays the
safety net, so a nudge lost (the bridge died after the commit or with a nudge waiting, a batch
this bridge has not seen yet) only delays a device."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import Connection, select
from sqlmodel import SQLModel

from ota.db.models import Batch, Task
from ota.domain import OPEN_BATCH_STATES, BatchKind, BatchState

BATCHES = SQLModel.metadata.tables[Batch.__tablename__]  # type: ignore[index]
TASKS = SQLModel.metadata.tables[Task.__tablename__]  # type: ignore[index]
# How stale the bridge's view of the open dynamic batches may be: one small query this often,
# and only in flushes that hold version reports. A batch is nudged once when first seen, for
# the devices that reported between its prepare and that read.
REFRESH_SECONDS = 3.0
# A batch syncs at most once a second anyway (workflows/batch_arrivals.py): a nudge sooner
# would only cost it a signal and a workflow task. Arrivals at 3 devices a second then cost
# about 0.3 signals a device, at 50 a second 0.02.
NUDGE_EVERY_SECONDS = 1.0
CHUNK = 500

# (product key, module, version)
Source = tuple[str, str, str]


class DynamicBatches:
    """Which open dynamic batch takes a device that reports (product, module, version): the
    latest one that lists the version, as ota.services.targets.dynamic_filter rules (an older
    batch leaves a version a later one claims). Only one in progress is nudged: a scheduled or
    paused batch does not sync, and looks anyway when it starts or resumes."""

    def __init__(
        self,
        refresh_seconds: float = REFRESH_SECONDS,
        nudge_every: float = NUDGE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.nudge_every = nudge_every
        self._clock = clock
        self._read_at: float | None = None
        self._taker: dict[Source, str] = {}  # -> the batch id
        self._seen: set[str] = set()
        # The flush's thread and the bridge's event loop (`waiting_due`) both nudge.
        self._lock = threading.Lock()
        self._sent_at: dict[str, float] = {}
        self._waiting: set[str] = set()  # nudges held back until their batch's second

    def nudges(
        self, conn: Connection, reports: Iterable[tuple[int, Source]], busy: set[int]
    ) -> list[str]:
        """The batches to nudge for these version reports ((device id, source) each) of a
        flush, in its transaction. `busy`: devices with an active task (in this batch: already
        a target; in another: dynamic_filter leaves them for a later sync)."""
        first_seen = self._refresh(conn)
        wanted: dict[int, str] = {}
        for device_id, source in reports:
            batch_id = self._taker.get(source)
            if batch_id is not None and device_id not in busy:
                wanted[device_id] = batch_id
        for device_id, batch_id in _already_targets(conn, wanted):
            if wanted.get(device_id) == batch_id:
                del wanted[device_id]
        return self._due(set(wanted.values()) | first_seen)

    def waiting_due(self) -> list[str]:
        """The nudges held back whose second has come (the bridge asks a few times a second)."""
        return self._due(set()) if self._waiting else []

    def _due(self, batches: set[str]) -> list[str]:
        """Of these batches and those waiting, the ones to nudge now; the rest wait."""
        with self._lock:
            now = self._clock()
            due = []
            for batch_id in sorted(batches | self._waiting):
                if now - self._sent_at.get(batch_id, -math.inf) >= self.nudge_every:
                    self._sent_at[batch_id] = now
                    self._waiting.discard(batch_id)
                    due.append(batch_id)
                else:
                    self._waiting.add(batch_id)
            return due

    def _refresh(self, conn: Connection) -> set[str]:
        """Re-read the open dynamic batches when stale; returns those in progress seen for the
        first time."""
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self.refresh_seconds:
            return set()
        rows = conn.execute(
            select(
                BATCHES.c.id,
                BATCHES.c.product_key,
                BATCHES.c.module,
                BATCHES.c.src_versions,
                BATCHES.c.state,
                BATCHES.c.created_at,
            ).where(BATCHES.c.kind == BatchKind.DYNAMIC, BATCHES.c.state.in_(OPEN_BATCH_STATES))
        )
        latest: dict[Source, tuple[datetime, str, str]] = {}
        for batch_id, pk, module, versions, state, created_at in rows:
            for version in versions or []:
                key = (pk, module, version)
                if key not in latest or (created_at, batch_id) > latest[key][:2]:
                    latest[key] = (created_at, batch_id, state)
        self._taker = {
            key: batch_id
            for key, (_, batch_id, state) in latest.items()
            if state == BatchState.IN_PROGRESS
        }
        taking = set(self._taker.values())
        first_seen, self._seen = taking - self._seen, taking
        self._read_at = now
        with self._lock:  # forget the batches no longer open
            self._sent_at = {b: at for b, at in self._sent_at.items() if b in taking}
            self._waiting &= taking
        return first_seen


def _already_targets(conn: Connection, wanted: dict[int, str]) -> list[tuple[int, str]]:
    """(device, batch) pairs among `wanted` that have a task, in any state: a dynamic batch
    takes a device once."""
    if not wanted:
        return []
    batch_ids = sorted(set(wanted.values()))
    devices = sorted(wanted)
    found: list[tuple[int, str]] = []
    for i in range(0, len(devices), CHUNK):
        rows = conn.execute(
            select(TASKS.c.device_id, TASKS.c.batch_id).where(
                TASKS.c.device_id.in_(devices[i : i + CHUNK]), TASKS.c.batch_id.in_(batch_ids)
            )
        )
        found += [(d, b) for d, b in rows]
    return found
