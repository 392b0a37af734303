"""Signals from the bridge to device workflows: concurrent, and never fatal to the bridge."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from temporalio.service import RPCError, RPCStatusCode

from ota.bridge.records import Signal

log = logging.getLogger(__name__)

CONCURRENCY = 64
RETRY_DELAYS = (0.2, 1.0, 3.0)  # Temporal briefly unavailable: try again before giving up
TRANSIENT = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.ABORTED}


class SignalClient(Protocol):
    """What the bridge needs of temporalio's Client (tests may pass a recorder)."""

    def get_workflow_handle(self, workflow_id: str) -> Any: ...


class Signaller:
    def __init__(self, client: SignalClient | None, stats: Counter[str]) -> None:
        self.client = client
        self.stats = stats
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def send(self, signals: Sequence[Signal]) -> None:
        if self.client is None:
            self.stats["signals_skipped"] += len(signals)
            return
        await asyncio.gather(*(self._send_one(s) for s in signals))

    async def _send_one(self, s: Signal) -> None:
        assert self.client is not None
        args = [] if s.arg is None else [s.arg]
        async with self._limit:
            for delay in (*RETRY_DELAYS, None):
                try:
                    await self.client.get_workflow_handle(s.workflow_id).signal(s.name, *args)
                    self.stats["signals"] += 1
                    return
                except RPCError as exc:
                    if exc.status == RPCStatusCode.NOT_FOUND:
                        # Finished, canceled or never started: the database already says enough.
                        log.info("no running workflow %s for signal %s", s.workflow_id, s.name)
                        self.stats["signals_not_found"] += 1
                        return
                    if exc.status not in TRANSIENT or delay is None:
                        log.warning("signal %s to %s failed: %s", s.name, s.workflow_id, exc)
                        self.stats["signal_errors"] += 1
                        return
                except Exception:
                    log.exception("signal %s to %s failed", s.name, s.workflow_id)
                    self.stats["signal_errors"] += 1
                    return
                await asyncio.sleep(delay)
