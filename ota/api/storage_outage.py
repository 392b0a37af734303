"""A storage outage as the download route lives it: one log line when it starts, one when it
ends, and quick refusals in between.

While the store is down, a request is tried against it only once every PROBE_SECONDS; the others
are refused at once (503), so a fleet retrying its downloads costs no server thread per device
waiting on a dead S3. The first request after the store answers again ends the outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ota.storage import StorageUnavailable

log = logging.getLogger(__name__)

PROBE_SECONDS = 2.0
# What a 503 tells the device to wait; our SDK waits at least this long before its next try.
RETRY_AFTER_SECONDS = 5


class StorageOutage:
    """One per HTTP server (app.state.storage_outage); the route runs in threads, hence the lock."""

    def __init__(
        self, probe_seconds: float = PROBE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.probe_seconds = probe_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the outage began; None: the store is up
        self._next_probe = 0.0
        self._refused = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def refuse_now(self) -> bool:
        """True: answer 503 without asking the store (an outage, and not this request's turn
        to probe). Otherwise the caller tries the store and reports `failed` or `ok`."""
        if self._since is None:
            return False
        with self._lock:
            now = self.clock()
            if now < self._next_probe:
                self._refused += 1
                return True
            self._next_probe = now + self.probe_seconds  # this request is the probe
            return False

    def failed(self, reason: str) -> None:
        with self._lock:
            now = self.clock()
            self._refused += 1
            self._next_probe = now + self.probe_seconds
            if self._since is not None:
                return
            self._since = now
        log.error(
            "firmware storage is unavailable, downloads answer 503 until it is back: %s", reason
        )

    def ok(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            lasted, refused = self.clock() - self._since, self._refused
            self._since, self._refused = None, 0
        log.warning(
            "firmware storage is back after %.0f s; %d download requests were refused meanwhile",
            lasted,
            refused,
        )


class QuietBrokenDownloads(logging.Filter):
    """uvicorn logs a traceback for every response the app breaks off; a download cut short
    by a storage outage is already told once by StorageOutage, so those are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _caused_by_storage(exc)


def _caused_by_storage(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, StorageUnavailable):
            return True
        if isinstance(exc, BaseExceptionGroup):
            return all(_caused_by_storage(e) for e in exc.exceptions)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def install_log_filter() -> None:
    """Once per process, on uvicorn's error logger (its dictConfig keeps a logger's filters)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietBrokenDownloads) for f in logger.filters):
        logger.addFilter(QuietBrokenDownloads())
