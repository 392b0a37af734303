"""The event loop of ota's long-running processes: uvloop where it is installed, else asyncio's.

The machine is CPU-bound during a large batch (bench: CPU per device), and the worker, bridge,
HTTP server and simulated fleet spend much of their Python time in the event loop itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # not on Windows
        return asyncio.run(main)
    return uvloop.run(main)
