"""Maintenance windows (AWS IoT Jobs' schedulingConfig.maintenanceWindows): a window opens at
each time a cron expression names, in a time zone, and stays open for some minutes. Pure: the
batch workflow asks it at workflow time, and the options check and the dry run ask it too.

Only the standard library and cronsim (pure Python) are imported: workflows import this module.
Wall-clock times are read in the window's zone (a daily "0 2 * * *" opens at 02:00 local time
across a DST change); durations are real minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

CRON_FIELDS = 5  # minute hour day-of-month month day-of-week (cronsim also takes seconds: no)
# Overlapping windows (every 10 minutes, 30 minutes long) make one long window; chained this
# many at most when looking for its end (a window open for ever ends at the last one looked at).
MAX_CHAINED = 1500
SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class WindowSpec:
    cron: str
    minutes: int
    tz: str = "UTC"


@dataclass(frozen=True)
class WindowAt:
    """Where a moment falls: inside a window (until `closes_at`) or before the next
    (`opens_at`). Times are aware, in the window's zone."""

    open: bool
    opens_at: datetime  # the current window's start when open
    spec: WindowSpec

    @property
    def closes_at(self) -> datetime:
        """Worked out only when asked (the dry run asks; the pacer, asking at every burst
        whether it may push, does not): overlapping windows chain up to MAX_CHAINED."""
        return _chained_end(self.spec, self.opens_at, timedelta(minutes=self.spec.minutes))


def cron_problem(cron: str) -> str | None:
    """What is wrong with a window's cron expression, or None."""
    if len(cron.split()) != CRON_FIELDS:
        return "must be a cron expression of 5 fields: minute hour day month weekday"
    try:
        next(CronSim(cron, datetime.now(UTC)))
    except CronSimError as e:
        return f"is not a valid cron expression ({e})"
    except StopIteration:  # pragma: no cover - cronsim raises CronSimError for impossible dates
        return "never opens"
    return None


def zone_problem(tz: str) -> str | None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return "must be an IANA time zone, e.g. UTC or Asia/Shanghai"
    return None


def window_at(spec: WindowSpec, now: datetime) -> WindowAt:
    """Whether `now` (aware) is inside one of the spec's windows, and when that one closes or
    the next opens."""
    local = now.astimezone(ZoneInfo(spec.tz))
    length = timedelta(minutes=spec.minutes)
    # The latest start at or before now: cronsim's reverse search is strictly before its start.
    # Starts fall on whole minutes: search from the whole second after now (from 01:59:59.5 + 1s
    # it found 02:00, a start still ahead, and called the window open half a second early).
    last = next(CronSim(spec.cron, local.replace(microsecond=0) + SECOND, reverse=True), None)
    # cronsim counts wall-clock time: once the clock falls back (01:00 EST after 01:59 EDT), its
    # forward search yields starts already past (01:30 EDT, 60 minutes long: open until 01:30
    # EST). Without this the window was said closed until a past time: the pacer napped 0 s in
    # a loop until the window ended.
    later = CronSim(spec.cron, local)
    opens = next(later)
    while _utc(opens) <= _utc(now):
        last = opens if last is None else max(last, opens, key=_utc)
        opens = next(later)
    if last is not None and _utc(_end(last, length)) > _utc(now):
        return WindowAt(True, last, spec)
    return WindowAt(False, opens, spec)


def _utc(moment: datetime) -> datetime:
    """Compare as instants: two times of one zone compare by wall clock, ignoring DST's fold."""
    return moment.astimezone(UTC)


def _end(start: datetime, length: timedelta) -> datetime:
    """Real minutes after a local start (adding to a zoned time would add wall-clock time)."""
    return (start.astimezone(UTC) + length).astimezone(start.tzinfo)


def _chained_end(spec: WindowSpec, start: datetime, length: timedelta) -> datetime:
    """The end of the window opening at `start`, extended by the windows opening before it
    closes."""
    end = _end(start, length)
    later = CronSim(spec.cron, start)
    for _ in range(MAX_CHAINED):
        following = next(later)
        if _utc(following) > _utc(end):
            break
        end = max(end, _end(following, length), key=_utc)
    return end
