"""The pure arithmetic of a rollout: phase limits and gates, the ramp (ota/rollout.py), maintenance
windows (ota/windows.py) and what holds a pacer back (workflows/holding.py). No Temporal, no DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ota.contracts import BatchInput, PacerCarry
from ota.rollout import phase_limits, phase_passed, ramp_rate
from ota.windows import WindowAt, WindowSpec, cron_problem, window_at, zone_problem
from workflows.holding import phase_hold, phase_room, window_hold

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def instants(at: WindowAt) -> tuple[bool, datetime, datetime]:
    """A WindowAt in UTC: a zoned time in DST's repeated hour equals no time of another zone
    (Python's rule), and two of one zone compare by wall clock, ignoring the fold."""
    return at.open, at.opens_at.astimezone(UTC), at.closes_at.astimezone(UTC)


# --- phases ---


@pytest.mark.parametrize(
    ("phases", "total", "limits"),
    [
        ([1, 10, 100], 1000, [10, 100, 1000]),
        ([1, 10], 1000, [10, 100, 1000]),  # the last phase, 100, is implied
        ([1, 10, 100], 50, [1, 5, 50]),  # 1% of 50 is half a device: one
        ([3, 30], 10, [1, 3, 10]),  # 0.3 -> 1, 3 -> 3: rounded up
        ([33], 10, [4, 10]),  # 3.3 -> 4
        ([1, 10], 3, [1, 3]),  # 10% of 3 adds no device to 1% of 3: that gate is dropped
        ([50, 100], 1, [1]),  # one device: one phase, no gate
        ([100], 7, [7]),
        ([1, 10], 0, [0]),  # nothing to push: one empty phase, no gate
        ([], 5, [5]),
    ],
)
def test_phase_limits(phases, total, limits):
    assert phase_limits(phases, total) == limits


def test_phase_limits_never_exceed_the_total_and_end_with_it():
    for total in range(0, 250):
        limits = phase_limits([1, 2, 5, 10, 25, 50, 99], total)
        assert limits[-1] == total
        assert limits == sorted(set(limits)), (total, limits)  # strictly increasing
        assert total == 0 or limits[0] >= 1


@pytest.mark.parametrize(
    ("updated", "judged", "promote_at", "passed"),
    [
        (9, 10, 90, True),  # exactly at the threshold
        (8, 10, 90, False),
        (89, 100, 90, False),
        (1, 3, 33, True),  # 33.3% >= 33%
        (1, 3, 34, False),
        (10, 10, 100, True),
        (9, 10, 100, False),
        (0, 0, 100, True),  # nothing judged (all busy elsewhere): nothing argues against it
        (0, 1, 1, False),
    ],
)
def test_phase_passed_at_its_threshold(updated, judged, promote_at, passed):
    assert phase_passed(updated, judged, promote_at) is passed


# --- the ramp ---


@pytest.mark.parametrize(
    ("succeeded", "rate"),
    [(0, 10), (9, 10), (10, 20), (19, 20), (20, 40), (30, 80), (40, 100), (1000, 100)],
)
def test_the_ramp_doubles_every_step_up_to_the_batch_rate(succeeded, rate):
    assert ramp_rate(10, 2.0, 10, succeeded, 100) == rate


def test_the_ramp_with_huge_counts_reaches_the_ceiling_without_overflow():
    # 1.1 ** 10**6 overflows a float: the ceiling must be found before raising to the power.
    assert ramp_rate(1, 1.1, 1, 10**6, 1000) == 1000
    assert ramp_rate(1, 5.0, 1, 10**18, 1000) == 1000
    assert ramp_rate(1000, 2.0, 1, 0, 1000) == 1000  # base already at the ceiling


def test_a_small_factor_rounds_down_but_never_below_one():
    assert [ramp_rate(1, 1.1, 1, n, 1000) for n in (0, 1, 7, 8)] == [1, 1, 1, 2]  # 1.1**8=2.14
    assert [ramp_rate(5, 1.1, 1, n, 1000) for n in (1, 2, 3)] == [5, 6, 6]  # 5.5, 6.05, 6.655
    assert ramp_rate(10, 1.1, 100, 99, 1000) == 10  # no whole step yet


# --- maintenance windows ---


def test_inside_and_outside_a_daily_window():
    spec = WindowSpec("0 2 * * *", 60)
    inside = window_at(spec, utc(2026, 1, 1, 2, 30))
    assert (inside.open, inside.opens_at, inside.closes_at) == (
        True,
        utc(2026, 1, 1, 2),
        utc(2026, 1, 1, 3),
    )
    assert window_at(spec, utc(2026, 1, 1, 2)).open  # open from its first second
    after = window_at(spec, utc(2026, 1, 1, 3))  # closed at its last
    assert (after.open, after.opens_at, after.closes_at) == (
        False,
        utc(2026, 1, 2, 2),
        utc(2026, 1, 2, 3),
    )
    before = window_at(spec, utc(2026, 1, 1, 1, 59, 59, 500_000))
    assert (before.open, before.opens_at) == (False, utc(2026, 1, 1, 2))


def test_a_window_across_midnight():
    spec = WindowSpec("0 23 * * *", 120)
    at = window_at(spec, utc(2026, 1, 2, 0, 30))
    assert (at.open, at.opens_at, at.closes_at) == (True, utc(2026, 1, 1, 23), utc(2026, 1, 2, 1))
    assert not window_at(spec, utc(2026, 1, 2, 1, 0)).open


def test_overlapping_windows_make_one():
    three = WindowSpec("0,10,20 2 * * *", 30)  # 02:00-02:30, 02:10-02:40, 02:20-02:50
    at = window_at(three, utc(2026, 1, 1, 2, 45))
    assert (at.open, at.opens_at, at.closes_at) == (
        True,
        utc(2026, 1, 1, 2, 20),
        utc(2026, 1, 1, 2, 50),
    )
    assert window_at(three, utc(2026, 1, 1, 1)).closes_at == utc(2026, 1, 1, 2, 50)
    # Every 10 minutes, 30 long: never closed; its end is as far as the chain is followed.
    always = WindowSpec("*/10 * * * *", 30)
    for minute in range(0, 60, 7):
        at = window_at(always, utc(2026, 1, 1, 5, minute))
        assert at.open
        assert at.closes_at - utc(2026, 1, 1, 5, minute) > timedelta(days=1)


def test_a_window_in_a_time_zone():
    spec = WindowSpec("0 2 * * *", 60, "Asia/Shanghai")  # 02:00 CST is 18:00 UTC the day before
    at = window_at(spec, utc(2026, 1, 1, 18, 30))
    assert at.open and at.opens_at == datetime(2026, 1, 2, 2, tzinfo=SHANGHAI)
    closed = window_at(spec, utc(2026, 1, 1, 2, 30))  # 02:30 UTC is 10:30 in Shanghai
    assert not closed.open
    assert closed.opens_at == utc(2026, 1, 1, 18)


def test_a_window_on_the_day_its_time_does_not_exist():
    """New York springs forward on 2026-03-08 from 02:00 to 03:00: a 02:30 window opens at 03:00
    (as Debian's cron runs a job of the skipped hour), and still lasts 60 real minutes."""
    spec = WindowSpec("30 2 * * *", 60, "America/New_York")
    before = window_at(spec, utc(2026, 3, 8, 5))  # 00:00 EST
    assert not before.open
    assert before.opens_at == utc(2026, 3, 8, 7)  # 03:00 EDT
    inside = window_at(spec, utc(2026, 3, 8, 7, 30))
    assert inside.open and inside.closes_at == utc(2026, 3, 8, 8)
    # The next day it is 02:30 EDT again.
    assert window_at(spec, utc(2026, 3, 8, 8)).opens_at == utc(2026, 3, 9, 6, 30)


def test_a_window_counts_real_minutes_when_the_clock_falls_back():
    """New York falls back on 2026-11-01 from 02:00 EDT to 01:00 EST: a window of 120 minutes from
    01:00 EDT (05:00 UTC) ends at 07:00 UTC, which the wall clock calls 02:00, not 03:00."""
    spec = WindowSpec("0 1 * * *", 120, "America/New_York")
    at = window_at(spec, utc(2026, 11, 1, 6, 30))
    assert instants(at) == (True, utc(2026, 11, 1, 5), utc(2026, 11, 1, 7))
    assert at.closes_at.astimezone(NEW_YORK).hour == 2
    assert not window_at(spec, utc(2026, 11, 1, 7)).open


def test_inside_a_window_during_the_repeated_hour():
    """01:30 EDT (05:30 UTC), 60 minutes: at 06:00 UTC the wall clock reads 01:00 EST, before
    01:30 again. The window is open; it was said closed until 01:30 EDT, a time already past,
    and the pacer napped 0 s in a loop until 06:30 UTC."""
    spec = WindowSpec("30 1 * * *", 60, "America/New_York")
    at = window_at(spec, utc(2026, 11, 1, 6))
    assert instants(at) == (
        True,
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 6, 30),
    )
    after = window_at(spec, utc(2026, 11, 1, 6, 45))  # 01:45 EST: closed, next is tomorrow
    assert instants(after)[:2] == (False, utc(2026, 11, 2, 6, 30))


def test_the_next_opening_is_never_in_the_past():
    """Whatever the moment, a closed window names a future opening (a hold with a past `until`
    would be a busy loop), and an open one started at or before now and ends after it."""
    spec = WindowSpec("30 1 * * *", 60, "America/New_York")
    now = utc(2026, 10, 31, 20)
    while now < utc(2026, 11, 2, 12):
        is_open, opens_at, closes_at = instants(window_at(spec, now))
        if is_open:
            assert opens_at <= now < closes_at, now
        else:
            assert now < opens_at < closes_at, now
        now += timedelta(minutes=5)


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("0 2 * *", "5 fields"),
        ("0 0 2 * * *", "5 fields"),  # cronsim would read seconds first: refused
        ("@daily", "5 fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("0 2 * * mon-", "not a valid cron expression"),
        ("0 0 30 2 *", "not a valid cron expression"),  # 30 February never comes
    ],
)
def test_cron_problems(cron, problem):
    found = cron_problem(cron)
    assert found is not None and problem in found, found


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/10 * * * *", "0 0 29 2 *", "30 1 * * 1-5"])
def test_good_crons(cron):
    assert cron_problem(cron) is None


def test_zone_problems():
    assert zone_problem("Asia/Shanghai") is None and zone_problem("UTC") is None
    for bad in ("Mars/Olympus", "", "utc", "../etc/passwd", "/etc/localtime"):
        assert zone_problem(bad) == "must be an IANA time zone, e.g. UTC or Asia/Shanghai", bad


# --- what holds a pacer back ---


def batch(**options) -> BatchInput:
    return BatchInput(batch_id="b1", firmware_id=1, src_versions=["1.0.0"], **options)


def test_a_window_holds_until_the_next_opens():
    inp = batch(window="0 2 * * *", window_minutes=60, window_tz="Asia/Shanghai")
    assert window_hold(inp, utc(2026, 1, 1, 18, 30)) is None  # 02:30 in Shanghai
    hold = window_hold(inp, utc(2026, 1, 1, 3))
    assert hold is not None
    assert hold.reason == "window"
    assert hold.until == utc(2026, 1, 1, 18).timestamp()
    assert hold.note == "outside the maintenance window: the next opens at 2026-01-02 02:00 CST"


def test_phase_room_and_the_gate():
    inp = batch(phases=[1, 10], promote_at=90)  # 1000 targets: 10, 100, 1000
    carry = PacerCarry(total=1000)
    assert phase_room(inp, carry) == 10 and phase_hold(inp, carry) is None
    carry.started = 7
    assert phase_room(inp, carry) == 3 and phase_hold(inp, carry) is None
    carry.started = 10
    assert phase_room(inp, carry) == 0
    hold = phase_hold(inp, carry)
    assert hold is not None and (hold.reason, hold.until) == ("phase", None)
    assert hold.note == "phase 1 of 3 (10 devices): promotes when 90% run the new version"
    carry.phase, carry.started = 1, 60  # promoted
    assert phase_room(inp, carry) == 40 and phase_hold(inp, carry) is None
    carry.started = 100
    assert phase_hold(inp, carry).note.startswith("phase 2 of 3 (100 devices)")  # type: ignore[union-attr]
    carry.phase = 2  # the last phase: no gate ahead, no room to count
    assert phase_room(inp, carry) is None and phase_hold(inp, carry) is None


def test_a_manual_gate_waits_for_promote():
    inp = batch(phases=[50], promote="manual")
    carry = PacerCarry(total=3, started=2)  # 50% of 3: 2 devices
    hold = phase_hold(inp, carry)
    assert hold is not None and hold.note == "phase 1 of 2 (2 devices): waiting for promote"


def test_a_batch_too_small_for_its_gates_has_none():
    inp = batch(phases=[1, 10], promote_at=90)
    for started in (0, 1):
        carry = PacerCarry(total=1, started=started)  # one device: one phase
        assert phase_room(inp, carry) is None and phase_hold(inp, carry) is None
    assert phase_room(inp, PacerCarry(total=0)) is None
