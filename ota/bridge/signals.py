"""Signals from the bridge to device workflows: concurrent, and never fatal to the bridge."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from temporalio.service import RPCError, RPCStatusCode

from ota.bridge.records import Signal

log = logging.getLogger(__name__)

CONCURRENCY = 64
RETRY_DELAYS = (0.2, 1.0, 3.0)  # Temporal briefly unavailable: try again before giving up
RECONNECT_SECONDS = 15.0
TRANSIENT = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.ABORTED}
SENT, NOT_FOUND, FAILED = "sent", "not_found", "failed"


class SignalClient(Protocol):
    """What the bridge needs of temporalio's Client (tests may pass a recorder)."""

    def get_workflow_handle(self, workflow_id: str) -> Any: ...


Connect = Callable[[], Awaitable[SignalClient]]


class Signaller:
    """Sends signals with a client, or one `connect` makes when first needed (Temporal may
    be down when the bridge starts: reports are still recorded meanwhile)."""

    def __init__(self, client: SignalClient | Connect | None, stats: Counter[str]) -> None:
        self.client: SignalClient | None = None
        self.connect: Connect | None = None
        if callable(client):
            self.connect = client
        else:
            self.client = client
        self.stats = stats
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._retry_at = 0.0

    async def _client(self) -> SignalClient | None:
        now = asyncio.get_running_loop().time()
        if self.client is None and self.connect is not None and now >= self._retry_at:
            try:
                self.client = await self.connect()
            except Exception as exc:
                # A failed connect takes seconds: don't hold every flush up with another.
                self._retry_at = now + RECONNECT_SECONDS
                log.error("cannot reach Temporal: %s", exc)
        return self.client

    async def send(self, signals: Sequence[Signal]) -> None:
        if not signals:
            return
        client = await self._client()
        if client is None:
            if self.connect is not None:
                log.error("%d signals lost: Temporal unreachable", len(signals))
            self.stats["signals_skipped"] += len(signals)
            return
        await asyncio.gather(*(self._send_one(client, s) for s in signals))

    async def _send_one(self, client: SignalClient, s: Signal) -> None:
        args = [] if s.arg is None else [s.arg]
        async with self._limit:
            if await self._deliver(client, s.workflow_id, s.name, args) != NOT_FOUND:
                return
            # A device workflow started before ids became device/{pk}/{dn} keeps the old one.
            if s.legacy_id:
                outcome = await self._deliver(client, s.legacy_id, s.name, args)
                if outcome == SENT:
                    self.stats["signals_legacy"] += 1
                if outcome != NOT_FOUND:
                    return
        # Finished, canceled or never started: the database already says enough.
        log.info("no running workflow %s for signal %s", s.workflow_id, s.name)
        self.stats["signals_not_found"] += 1

    async def _deliver(self, client: SignalClient, workflow_id: str, name: str, args: list) -> str:
        """sent | not_found | failed (logged and counted)."""
        for delay in (*RETRY_DELAYS, None):
            try:
                await client.get_workflow_handle(workflow_id).signal(name, *args)
                self.stats["signals"] += 1
                return SENT
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return NOT_FOUND
                if exc.status not in TRANSIENT or delay is None:
                    log.warning("signal %s to %s failed: %s", name, workflow_id, exc)
                    self.stats["signal_errors"] += 1
                    return FAILED
            except Exception:
                log.exception("signal %s to %s failed", name, workflow_id)
                self.stats["signal_errors"] += 1
                return FAILED
            await asyncio.sleep(delay)
        return FAILED  # not reached: the last attempt returns
