"""The dry run's ETA: when a batch's last push is due, from its rate, ramp, maintenance windows
and phases. Pure (no database, no clock): the pacer's bursts (workflows/pacing.py) are simulated
from event to event (a ramp step, a phase's last device, a window closing), not in real time.

It is the fastest case, and says so in its notes: every pushed device updates at once, so the
ramp steps as soon as it may and the in-flight cap never binds; time waiting at a phase gate
(for the operator, or for the phase's devices to update) is not counted. A batch without a rate
has no ETA: its pushes go as fast as devices can be started, held back only by the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ota.rollout import LAST_PHASE, burst_size, phase_limits, ramp_rate
from ota.windows import WindowSpec, window_at

# Windows are walked up to a year ahead: a last push beyond that has no ETA (a batch without
# windows is computed in a few segments, however long it takes).
HORIZON = timedelta(days=366)
# Segments simulated at most (each ends at a window's close, a ramp step or a phase's end), so
# a dry run answers within a second: a window every hour for a year is 8,784.
MAX_SEGMENTS = 10_000


@dataclass(frozen=True)
class Rollout:
    """What the ETA needs of a batch: its targets and its pacing options."""

    targets: int
    rate: int | None  # devices a minute; None: unthrottled
    start_burst: int = 50  # the pacer's most starts at once (OTA_START_BURST)
    phases: tuple[int, ...] = ()
    ramp_base: int | None = None
    ramp_factor: float = 2.0
    ramp_every: int = 10
    window: WindowSpec | None = None


@dataclass(frozen=True)
class PhasePlan:
    """One phase of a batch: its cumulative percentage, the devices started by its end
    (cumulative), and those it adds."""

    percent: int
    devices: int
    added: int


@dataclass
class RolloutEta:
    """When the pushes happen; None where there is no ETA (the notes say why)."""

    first_push_at: datetime | None = None  # UTC: the start, or the first window's opening
    last_push_at: datetime | None = None  # UTC
    push_minutes: float | None = None  # from the start to the last push, window waits included
    windows: int = 0  # maintenance windows the pushes fall in
    gates: int = 0  # phase gates on the way (time waiting at them not counted)
    notes: list[str] = field(default_factory=list)  # what the ETA assumes or leaves out

    def summary(self) -> str:
        """One line for people: "last push ~2026-12-03 04:10 UTC (2d 16h from the start), in 2
        maintenance windows; 2 phase gates not counted"."""
        extra = [f"{_count(self.gates, 'phase gate')} not counted"] if self.gates else []
        if self.last_push_at is None or self.push_minutes is None:
            first = self.first_push_at
            when = [f"first push ~{_utc(first)}"] if first is not None and self.windows else []
            return "; ".join([f"no ETA: {self.notes[0]}", *when, *extra])
        head = (
            f"last push ~{_utc(self.last_push_at)} ({_duration(self.push_minutes)} from the start)"
        )
        if self.windows:
            head += f", in {_count(self.windows, 'maintenance window')}"
        return "; ".join([head, *extra])


def phase_plan(phases: list[int], targets: int) -> list[PhasePlan]:
    """A batch's phases (ota.rollout.phase_limits: a last 100% implied, a phase adding no device
    dropped), each named by the first percentage that makes it (the last by 100: the whole
    batch); none without phases or targets."""
    if not phases or targets <= 0:
        return []
    percents = phases if phases[-1] == LAST_PHASE else [*phases, LAST_PHASE]
    plan: list[PhasePlan] = []
    for pct in percents:
        devices = phase_limits([pct], targets)[0]  # what phase_limits makes of this percentage
        before = plan[-1].devices if plan else 0
        if devices > before:
            named = LAST_PHASE if devices == targets else pct
            plan.append(PhasePlan(named, devices, devices - before))
    return plan


def rollout_eta(r: Rollout, start: datetime) -> RolloutEta:
    """When the last of `r.targets` pushes is due for a batch starting at `start` (aware: its
    schedule, or now)."""
    limits = phase_limits(list(r.phases), r.targets) if r.phases else [r.targets]
    eta = RolloutEta(gates=len(limits) - 1 if r.targets else 0)
    if eta.gates:
        eta.notes.append(
            f"time waiting at {_count(eta.gates, 'phase gate')} (for promote, or for the "
            "phase's devices to update) is not counted"
        )
    if r.ramp_base is not None:
        eta.notes.append("the ramp at its fastest: every pushed device assumed to update at once")
    if r.rate is None:
        eta.notes.insert(
            0,
            "unthrottled: pushed as fast as devices can be started (at most the in-flight cap "
            "at once), so no rate to time them by",
        )
        if r.window is not None:
            opening = window_at(r.window, start)
            eta.first_push_at = (start if opening.open else opening.opens_at).astimezone(UTC)
            eta.windows = 1
        return eta
    return _simulate(r, start, limits, eta)


def _simulate(r: Rollout, start: datetime, limits: list[int], eta: RolloutEta) -> RolloutEta:
    """Bursts as the pacer lets them go: the n-th push of an even spread is due n * 60 / rate
    seconds after it began; a spread begins at the start, and anew where the pacer lets go
    (workflows/batch.py: a ramp step, a window's opening, a gate's promotion, at once here);
    times are seconds after `start`."""
    assert r.rate is not None
    t, pushed, phase = 0.0, 0, 0
    first: float | None = None
    last = 0.0
    # The end of the window pushes go in: none yet (a batch without windows: never).
    closes = -math.inf if r.window is not None else math.inf
    segments = 0
    while pushed < r.targets and segments < MAX_SEGMENTS:
        segments += 1
        if r.window is not None and t >= closes:
            t, closes = _next_window(r.window, start, t)
            if t > HORIZON.total_seconds():
                break
            eta.windows += 1
        first = t if first is None else first
        rate = _rate(r, pushed)
        size = burst_size(rate, r.start_burst)
        spacing = size * 60 / rate
        goal = min(limits[phase], _next_step(r, pushed, rate))
        bursts = math.ceil((goal - pushed) / size)
        if closes < math.inf:  # the bursts due before the window closes
            bursts = min(bursts, math.ceil((closes - t) / spacing))
        done = min(goal - pushed, bursts * size)
        last = t + (bursts - 1) * spacing
        pushed += done
        t += done * 60 / rate
        if _rate(r, pushed) != rate:  # a ramp step: the new spread begins at once
            t = last
        if pushed == limits[phase] and phase < len(limits) - 1:
            phase += 1  # a gate: its wait is not counted, and the new spread begins at once
            t = last
    if pushed < r.targets:
        eta.notes.insert(
            0,
            f"the last push is not due within {HORIZON.days} days"
            if segments < MAX_SEGMENTS
            else f"over {MAX_SEGMENTS:,} windows or ramp steps: too many to simulate",
        )
        return eta
    eta.first_push_at = (start + timedelta(seconds=first or 0.0)).astimezone(UTC)
    eta.last_push_at = (start + timedelta(seconds=round(last))).astimezone(UTC)
    eta.push_minutes = round(last / 60, 1)
    return eta


def _rate(r: Rollout, pushed: int) -> int:
    """The rate after `pushed` devices, all of them updated (the ramp's fastest case)."""
    assert r.rate is not None
    if r.ramp_base is None:
        return r.rate
    return ramp_rate(r.ramp_base, r.ramp_factor, r.ramp_every, pushed, r.rate)


def _next_step(r: Rollout, pushed: int, rate: int) -> int:
    """The pushes after which the ramp next steps up (at the batch's rate: never, so all)."""
    if r.ramp_base is None or rate >= (r.rate or 0):
        return r.targets
    return (pushed // r.ramp_every + 1) * r.ramp_every


def _next_window(spec: WindowSpec, start: datetime, t: float) -> tuple[float, float]:
    """From `t`, when pushes may go on (now, or the next window's opening) and when that window
    closes, in seconds after `start`."""
    at = window_at(spec, start + timedelta(seconds=t))
    opens = t if at.open else (at.opens_at - start).total_seconds()
    return opens, (at.closes_at - start).total_seconds()


def _utc(at: datetime) -> str:
    """To the nearest minute."""
    return (at.astimezone(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%d %H:%M UTC")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _duration(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes:g} min"
    hours, mins = divmod(round(minutes), 60)
    if hours < 48:
        return f"{hours}h {mins:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"
