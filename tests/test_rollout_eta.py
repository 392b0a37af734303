"""The dry run's ETA (ota.services.rollout_eta): the pacer's bursts simulated through the rate,
the ramp, maintenance windows and phase gates. Pure: no database, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ota.rollout import phase_limits
from ota.services import rollout_eta as eta_module
from ota.services.rollout_eta import Rollout, phase_plan, rollout_eta
from ota.windows import WindowSpec

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(**delta: float) -> datetime:
    return START + timedelta(**delta)


@pytest.mark.parametrize(
    ("targets", "rate", "minutes", "last"),
    [
        (6, 10, 0.5, at(seconds=30)),  # one a burst, 6 s apart: the 6th 30 s in
        (1001, 1000, 1.0, at(seconds=60)),  # bursts of 50 (OTA_START_BURST), 3 s apart
        (1, 100, 0.0, START),  # the first push is due at once
        (0, 100, 0.0, START),
    ],
)
def test_the_rate_alone(targets, rate, minutes, last):
    eta = rollout_eta(Rollout(targets, rate), START)
    assert (eta.push_minutes, eta.last_push_at, eta.first_push_at) == (minutes, last, START)
    assert (eta.windows, eta.gates, eta.notes) == (0, 0, [])


def test_unthrottled_has_no_eta_and_says_why():
    eta = rollout_eta(Rollout(500, None), START)
    assert (eta.push_minutes, eta.last_push_at) == (None, None)
    assert "in-flight cap" in eta.notes[0]
    assert eta.summary().startswith("no ETA: unthrottled")


def test_unthrottled_in_a_window_says_when_pushes_begin():
    eta = rollout_eta(Rollout(500, None, window=WindowSpec("0 14 * * *", 30)), START)
    assert (eta.push_minutes, eta.first_push_at, eta.windows) == (None, at(hours=2), 1)
    assert "first push ~2026-11-30 14:00 UTC" in eta.summary()


def test_the_ramp_at_its_fastest():
    """40 devices, 10 a minute rising by 2x every 10 updated to 40: 10 pushes 6 s apart
    (0..54 s), a step and 10 more 3 s apart (54..81 s), a step to 40 a minute: bursts of 3,
    4.5 s apart, 7 bursts for the last 20 (81..108 s)."""
    ramp = Rollout(40, 40, ramp_base=10, ramp_factor=2.0, ramp_every=10)
    eta = rollout_eta(ramp, START)
    assert (eta.last_push_at, eta.push_minutes) == (at(seconds=108), 1.8)
    assert any("fastest" in n for n in eta.notes)
    flat = rollout_eta(Rollout(40, 40), START)
    assert flat.last_push_at is not None and flat.last_push_at < eta.last_push_at


def test_a_window_closed_at_the_start_opens_later():
    """12:00, a window at 14:00 for an hour: 100 devices at 10 a minute, 6 s apart from 14:00."""
    eta = rollout_eta(Rollout(100, 10, window=WindowSpec("0 14 * * *", 60)), START)
    assert (eta.first_push_at, eta.last_push_at) == (at(hours=2), at(hours=2, seconds=594))
    assert (eta.push_minutes, eta.windows) == (129.9, 1)
    assert eta.summary() == (
        "last push ~2026-11-30 14:10 UTC (2h 10m from the start), in 1 maintenance window"
    )


def test_pushes_spanning_two_windows():
    """A 5-minute window holds 50 pushes 6 s apart (0..294 s); the other 50 go in the next
    day's, the spread begun anew at its opening."""
    eta = rollout_eta(Rollout(100, 10, window=WindowSpec("0 14 * * *", 5)), START)
    assert eta.last_push_at == at(days=1, hours=2, seconds=294)
    assert eta.windows == 2
    assert "in 2 maintenance windows" in eta.summary()


def test_a_window_in_its_own_time_zone():
    """02:00 in Shanghai is 18:00 UTC the day before."""
    spec = WindowSpec("0 2 * * *", 60, "Asia/Shanghai")
    eta = rollout_eta(Rollout(1, 10, window=spec), START)
    assert eta.first_push_at == eta.last_push_at == at(hours=6)


def test_already_inside_a_window_pushes_at_once_until_it_closes():
    """Open since 11:30 until 12:01: 10 pushes (0..54 s), then the next day's at 11:30."""
    eta = rollout_eta(Rollout(20, 10, window=WindowSpec("30 11 * * *", 31)), START)
    assert eta.first_push_at == START
    assert eta.last_push_at == at(hours=23, minutes=30, seconds=54)
    assert eta.windows == 2


def test_phases_and_the_ramp_count_no_time_at_the_gates():
    """100 devices in phases of 10%, 50% and 100%: the first 10 at the ramp's 10 a minute
    (0..54 s), a gate (promoted at once: not counted) and the step to 20 a minute, 40 more 3 s
    apart (54..171 s), a gate and a new spread from there: 50 more (171..318 s)."""
    rollout = Rollout(100, 20, phases=(10, 50), ramp_base=10, ramp_factor=2.0, ramp_every=10)
    eta = rollout_eta(rollout, START)
    assert (eta.last_push_at, eta.gates) == (at(seconds=318), 2)
    assert eta.summary().endswith("; 2 phase gates not counted")
    assert any("2 phase gates" in n and "not counted" in n for n in eta.notes)


def test_phases_split_bursts_and_windows_split_phases():
    """80 devices in phases of 30% and 60% (24, 48, 80) at 60 a minute (bursts of 5, 5 s apart)
    in a 1-minute window each hour, open at the start: 5,5,5,5,4 from 0 s (a phase's last burst
    is short), a gate promoted at once (a new spread from its last burst), the same from 20 s,
    then 4 bursts from 40 s before the window closes at 60 s; the last 12 from 13:00 (5,5,2:
    0..10 s)."""
    rollout = Rollout(80, 60, phases=(30, 60), window=WindowSpec("0 * * * *", 1))
    eta = rollout_eta(rollout, START)
    assert (eta.first_push_at, eta.last_push_at) == (START, at(hours=1, seconds=10))
    assert (eta.gates, eta.windows) == (2, 2)


def test_gives_up_beyond_a_year():
    """A million devices at 10 a minute, 5 minutes a month."""
    eta = rollout_eta(Rollout(10**6, 10, window=WindowSpec("0 2 1 * *", 5)), START)
    assert (eta.push_minutes, eta.last_push_at) == (None, None)
    assert eta.notes[0] == "the last push is not due within 366 days"
    assert eta.summary().startswith("no ETA: the last push is not due within 366 days")


def test_gives_up_after_so_many_windows(monkeypatch):
    """A window of a minute every other minute: a segment each; a few allowed here."""
    monkeypatch.setattr(eta_module, "MAX_SEGMENTS", 5)
    eta = rollout_eta(Rollout(1000, 10, window=WindowSpec("*/2 * * * *", 1)), START)
    assert eta.last_push_at is None
    assert eta.notes[0] == "over 5 windows or ramp steps: too many to simulate"
    assert rollout_eta(Rollout(40, 10, window=WindowSpec("*/2 * * * *", 1)), START).windows == 4


def test_without_windows_any_length_is_counted():
    """Ten million devices at 10 a minute: 999,999.9 minutes, in one segment."""
    eta = rollout_eta(Rollout(10**7, 10), START)
    assert (eta.push_minutes, eta.windows) == (999999.9, 0)
    assert eta.summary().startswith("last push ~2028-10-24 22:40 UTC (694d 10h from the start)")


@pytest.mark.parametrize(
    ("phases", "targets"),
    [([1, 10], 1000), ([1, 10, 100], 50), ([1, 2, 3, 50], 10), ([50], 1), ([99], 3)],
)
def test_the_phase_plan_is_phase_limits(phases, targets):
    plan = phase_plan(phases, targets)
    assert [p.devices for p in plan] == phase_limits(phases, targets)
    assert sum(p.added for p in plan) == targets
    assert plan[-1].percent == 100


def test_the_phase_plan_names_the_percent_of_each_phase_it_keeps():
    """1%, 2% and 3% of 10 devices are each 1 device: one phase, named by the first."""
    assert [(p.percent, p.devices, p.added) for p in phase_plan([1, 2, 3, 50], 10)] == [
        (1, 1, 1),
        (50, 5, 4),
        (100, 10, 5),
    ]
    assert phase_plan([], 10) == [] and phase_plan([10], 0) == []
