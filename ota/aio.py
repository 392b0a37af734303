"""The event loop of ota's long-running processes: uvloop where it is installed, else asyncio's.

The machine is CPU-bound during a large batch (bench: CPU per device), and the worker, bridge,
HTTP server and simulated fleet spend much of their Python time in the event loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

RESTART_FIRST_SECONDS, RESTART_MAX_SECONDS = 1.0, 60.0


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # not on Windows
        return asyncio.run(main)
    return uvloop.run(main)


async def until_ready(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event | None = None
) -> T | None:
    """`attempt()` until it succeeds, with a growing pause; None if `stop` is set meanwhile.
    For a process that starts while Temporal or the database restarts: it waits, not exits."""
    stop = stop or asyncio.Event()
    pause = RESTART_FIRST_SECONDS
    while not stop.is_set():
        try:
            return await attempt()
        except Exception as exc:  # the first line: the driver's reason, no URL or secret
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("cannot %s: %s; trying again in %.0f s", what, reason, pause)
        if await stopped_within(stop, pause):
            break
        pause = min(pause * 2, RESTART_MAX_SECONDS)
    return None


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
