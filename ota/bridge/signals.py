"""Signals from the bridge to device workflows: concurrent, never fatal to the bridge, and never
dropped because Temporal is briefly away.

A signal either reaches its workflow or is refused for good (NOT_FOUND: the workflow ended, or a
non-transient error). While Temporal is unreachable (restarting, overloaded, not started yet),
`send` keeps trying with a growing pause, without limit: the flush it belongs to waits, so its
MQTT messages stay unacked, the inbox fills and stops reading, and the broker keeps the rest. A
bridge that dies meanwhile gets the messages again from the broker. Why not give up after a few
tries: a device's `failed` report lives only in its signal (the database does not record it), so
a lost one turns a retry into a timeout; a lost `updated` holds the device workflow, and the
batch, until the workflow re-reads its task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from temporalio.service import RPCError, RPCStatusCode

from ota.bridge.records import Signal
from ota.temporal import is_transient

log = logging.getLogger(__name__)

CONCURRENCY = 64
# Pause between tries while Temporal is away: short at first (a blip), then every 30 s at most
# (a dev server restarts in about 10 s; a cluster upgrade takes minutes).
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.2, 30.0


class Outcome(enum.Enum):
    SENT = "sent"
    NOT_FOUND = "not_found"
    REFUSED = "refused"  # a non-transient error: logged, counted, not tried again
    RETRY = "retry"  # Temporal unreachable: try again later


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
        self._outage_since: float | None = None  # when signals began to wait; None: all well

    async def _client(self) -> SignalClient | None:
        if self.client is None and self.connect is not None:
            try:
                self.client = await self.connect()
            except Exception as exc:  # ota.errors.Unavailable, or the SDK's RuntimeError
                self._outage(f"cannot connect: {exc}")
        return self.client

    async def send(self, signals: Sequence[Signal]) -> None:
        """Returns once every signal is delivered or refused for good; until then it waits
        for Temporal, however long that takes (cancel the task to give up)."""
        if not signals:
            return
        if self.client is None and self.connect is None:  # a bridge run without Temporal
            self.stats["signals_skipped"] += len(signals)
            return
        pending = list(signals)
        pause = RETRY_FIRST_SECONDS
        while True:
            client = await self._client()
            if client is not None:
                outcomes = await asyncio.gather(*(self._send_one(client, s) for s in pending))
                pending = [s for s, o in zip(pending, outcomes, strict=True) if o is Outcome.RETRY]
            if not pending:
                break
            self.stats["signal_retries"] += len(pending)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_SECONDS)
        if self._outage_since is not None:
            waited = asyncio.get_running_loop().time() - self._outage_since
            log.warning("Temporal reachable again: signals delivered after %.0f s", waited)
            self._outage_since = None

    def _outage(self, why: str) -> None:
        """Log once per outage, not once per signal."""
        if self._outage_since is None:
            self._outage_since = asyncio.get_running_loop().time()
            self.stats["signal_outages"] += 1
            log.error(
                "Temporal unavailable (%s): holding signals and the acks of their messages, "
                "retrying every %.0f s at most",
                why,
                RETRY_MAX_SECONDS,
            )

    async def _send_one(self, client: SignalClient, s: Signal) -> Outcome:
        args = [] if s.arg is None else [s.arg]
        async with self._limit:
            outcome = await self._deliver(client, s.workflow_id, s.name, args)
            # A device workflow started before ids became device/{pk}/{dn} keeps the old one.
            if outcome is Outcome.NOT_FOUND and s.legacy_id:
                outcome = await self._deliver(client, s.legacy_id, s.name, args)
                if outcome is Outcome.SENT:
                    self.stats["signals_legacy"] += 1
        if outcome is Outcome.NOT_FOUND:
            # Finished, canceled or never started: the database already says enough.
            log.info("no running workflow %s for signal %s", s.workflow_id, s.name)
            self.stats["signals_not_found"] += 1
        return outcome

    async def _deliver(
        self, client: SignalClient, workflow_id: str, name: str, args: list
    ) -> Outcome:
        try:
            await client.get_workflow_handle(workflow_id).signal(name, *args)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return Outcome.NOT_FOUND
            if is_transient(exc):
                self._outage(f"{exc.status.name if exc.status else 'error'}: {exc}")
                return Outcome.RETRY
            log.warning("signal %s to %s failed: %s", name, workflow_id, exc)
            self.stats["signal_errors"] += 1
            return Outcome.REFUSED
        except Exception:
            log.exception("signal %s to %s failed", name, workflow_id)
            self.stats["signal_errors"] += 1
            return Outcome.REFUSED
        self.stats["signals"] += 1
        return Outcome.SENT
