"""A batch's dry run (ota.services.batch_preview): the devices prepare_batch would target, counted
the same way, and nothing created; a request create refuses is refused the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from ota.batch_options import read_options
from ota.contracts import BatchInput
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, Task
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services.batch_preview import preview_batch
from ota.services.targets import select_targets
from tests.test_workflow_support import make_firmware, make_fleet, make_task

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def batch_input(fw: int, batch_id: str = "", **options) -> BatchInput:
    return BatchInput(batch_id, fw, **{**read_options({}), "src_versions": ["1.0.0"], **options})


def rows(engine) -> tuple[int, int]:
    with Session(engine) as session:
        return (
            session.exec(select(func.count()).select_from(Batch)).one(),
            session.exec(select(func.count()).select_from(Task)).one(),
        )


@pytest.fixture
def fleet(engine):
    """pk: 4 devices on 1.0.0 (one offline, one busy in another batch), 2 on 1.1.0, 1 on the
    target 2.0.0, 1 on 0.9.0 (not a source)."""
    pk, names = make_fleet(engine, 4)
    make_fleet(engine, 2, "1.1.0", product_key=pk, prefix="new")
    make_fleet(engine, 1, "2.0.0", product_key=pk, prefix="done")
    make_fleet(engine, 1, "0.9.0", product_key=pk, prefix="old")
    with session_scope(engine) as session:
        session.exec(update(Device).where(col(Device.name) == names[0]).values(online=False))  # type: ignore[call-overload]
    make_task(engine, pk, names[1], state="in_upgrade")
    return pk, make_firmware(engine, pk)


def test_counts_what_the_batch_would_target_and_creates_nothing(engine, fleet):
    _, fw = fleet
    before = rows(engine)
    inp = batch_input(fw, src_versions=["1.0.0", "1.1.0"], rate_per_minute=10)
    p = preview_batch(engine, inp, now=NOW)
    assert (p.targets, p.by_source_version) == (6, {"1.0.0": 4, "1.1.0": 2})
    assert (p.matching, p.skipped, p.offline, p.busy) == (6, 1, 1, 1)
    # The 6th start is due 5 * 60 / 10 s after pacing begins.
    assert (p.push_minutes, p.starts_at, p.last_push_at) == (
        0.5,
        NOW.isoformat(),
        "2026-11-30T12:00:30+00:00",
    )
    assert rows(engine) == before  # no batch, no task
    unpaced = preview_batch(engine, batch_input(fw))
    assert (unpaced.targets, unpaced.push_minutes, unpaced.last_push_at) == (4, None, None)


def test_a_phased_batch_counts_its_share_as_prepare_samples_it(engine, fleet):
    pk, fw = fleet
    make_fleet(engine, 6, product_key=pk, prefix="more")  # 10 devices on 1.0.0
    inp = batch_input(fw, batch_id="b-phased", target="phased", percent=30)
    p = preview_batch(engine, inp)
    assert (p.matching, p.percent, p.targets) == (10, 30, 3)
    # The same sample prepare_batch takes for a batch of that id.
    with Session(engine) as session:
        batch = Batch(
            id="b-phased",
            firmware_id=fw,
            product_key=pk,
            module="default",
            target_version="2.0.0",
            src_versions=["1.0.0"],
            target="phased",
            percent=30,
        )
        sampled, _ = select_targets(session, batch)
    assert sum(p.by_source_version.values()) == len(sampled) == 3


def test_selected_devices_and_a_scheduled_start(engine, fleet):
    _, fw = fleet
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    inp = batch_input(
        fw,
        src_versions=[],
        target="selected",
        device_names=["new00000", "old00000"],
        scheduled_at=at.isoformat(),
        rate_per_minute=60,
    )
    p = preview_batch(engine, inp)
    assert (p.targets, p.by_source_version) == (2, {"0.9.0": 1, "1.1.0": 1})
    assert (p.starts_at, p.push_minutes) == (at.isoformat(), round(1 / 60, 1))


@pytest.mark.parametrize(
    ("options", "error", "field"),
    [
        ({"rate_per_minute": 5}, InvalidInput, "rate_per_minute"),
        ({"pickup_timeout_minutes": 0}, InvalidInput, "pickup_timeout_minutes"),
        ({"src_versions": ["2.0.0"]}, InvalidInput, "src_versions"),
        ({"target": "selected", "device_names": ["nobody"]}, InvalidInput, "device_names"),
    ],
)
def test_refused_as_create_refuses(engine, fleet, options, error, field):
    _, fw = fleet
    with pytest.raises(error) as err:
        preview_batch(engine, batch_input(fw, **options))
    assert err.value.field == field


def test_an_unknown_or_unverified_firmware_or_a_second_dynamic_batch(engine, fleet):
    pk, fw = fleet
    with pytest.raises(NotFound):
        preview_batch(engine, batch_input(fw + 1000))
    unverified = make_firmware(engine, pk, "2.1.0", state="unverified")
    with pytest.raises(Conflict):
        preview_batch(engine, batch_input(unverified))
    with session_scope(engine) as session:
        session.add(
            Batch(
                id="dyn",
                firmware_id=fw,
                kind="dynamic",
                product_key=pk,
                module="default",
                target_version="2.0.0",
                src_versions=["1.0.0"],
            )
        )
    with pytest.raises(Conflict) as err:
        preview_batch(engine, batch_input(fw, policy="dynamic"))
    assert "already has dynamic batch dyn" in err.value.message


def test_phases_and_a_window_in_the_plan_and_the_eta(engine, fleet):
    """The fleet's 4 devices on 1.0.0 in phases of 25% and 50% (1, 2, 4 devices), pushed at 10
    a minute (6 s apart) in a window opening at 14:00, two hours after the start: the gates
    count no time (each promoted at once, a new spread from there), so 3 at 14:00, one at 6 s."""
    _, fw = fleet
    before = rows(engine)
    inp = batch_input(
        fw,
        rate_per_minute=10,
        phases=[25, 50],
        promote="manual",
        window="0 14 * * *",
        window_minutes=60,
    )
    p = preview_batch(engine, inp, now=NOW)
    assert p.targets == 4
    assert p.phases == [
        {"percent": 25, "devices": 1, "added": 1},
        {"percent": 50, "devices": 2, "added": 1},
        {"percent": 100, "devices": 4, "added": 2},
    ]
    assert (p.first_push_at, p.last_push_at) == (
        "2026-11-30T14:00:00+00:00",
        "2026-11-30T14:00:06+00:00",
    )
    assert (p.push_minutes, p.windows, p.gates) == (120.1, 1, 2)
    assert p.eta == (
        "last push ~2026-11-30 14:00 UTC (2h 00m from the start), in 1 maintenance window; "
        "2 phase gates not counted"
    )
    assert any("not counted" in note for note in p.eta_notes)
    assert rows(engine) == before
    plain = preview_batch(engine, batch_input(fw, rate_per_minute=10), now=NOW)
    assert (plain.phases, plain.gates, plain.windows) == ([], 0, 0)
