"""`ota batch create` and `ota verify`: a value out of range exits 2 naming the field and range."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func
from sqlmodel import Session, select
from typer.testing import CliRunner

from ota.db.engine import make_engine
from ota.db.models import Batch, Device, Task
from starter.cli import app
from tests.test_workflow_support import make_firmware, make_fleet

NOW = datetime.now(UTC)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("OTA_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")  # one line per message
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    pk, _ = make_fleet(engine, 1)
    fw = make_firmware(engine, pk)
    engine.dispose()

    def run(*args: str):
        return CliRunner().invoke(app, [str(a) for a in args])

    run.firmware = str(fw)  # type: ignore[attr-defined]
    run.db = tmp_path / "ota.db"  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize(
    ("args", "field", "allowed"),
    [
        (["--rate", "5"], "rate", "between 10 and 1000"),
        (["--rate", "1001"], "rate", "between 10 and 1000"),
        (["--timeout", "0"], "timeout", "between 1 and 1440"),
        (["--timeout", "1441"], "timeout", "between 1 and 1440"),
        (["--max-retries", "3"], "max_retries", "must be 1, 2 or 5"),
        (["--retry-interval", "5m"], "retry_interval", "none, 0, 10m, 30m, 1h, 24h"),
        (["--target", "phased", "--percent", "0"], "percent", "between 1 and 100"),
        (["--target", "phased", "--percent", "101"], "percent", "between 1 and 100"),
        (["--at", (NOW + timedelta(minutes=1)).isoformat()], "at", "5 minutes and 7 days"),
        (["--at", (NOW + timedelta(days=8)).isoformat()], "at", "5 minutes and 7 days"),
        (["--at", "tomorrow"], "at", "ISO 8601"),
        (["--policy", "sometimes"], "policy", "static or dynamic"),
        (["--target", "some"], "target", "all, selected or phased"),
        (["--target", "phased"], "percent", "1 to 100"),
        (["--policy", "dynamic", "--target", "phased", "--percent", "5"], "target", "dynamic"),
        (["--policy", "dynamic", "--at", (NOW + timedelta(hours=1)).isoformat()], "at", "static"),
        (["--src-version", "2.0.0"], "src_version", "target version"),
        (["--stop-at", "0"], "stop_at", "between 1 and 100 percent"),
        (["--stop-at", "101"], "stop_at", "between 1 and 100 percent"),
        (["--stop-at", "20", "--stop-min", "0"], "stop_min", "between 1 and 100000 devices"),
        (["--stop-at", "20", "--stop-on", "rejected"], "stop_on", "all, failed or timeout"),
        (["--stop-at", "20", "--stop-action", "halt"], "stop_action", "pause or cancel"),
        (["--stop-action", "cancel"], "stop_at", "is required with"),
        (["--max-in-flight", "0"], "max_in_flight", "between 1 and 100000 devices"),
        (["--rollback-firmware", "1"], "rollback_firmware", "requires stop_at"),
        (["--stop-at", "20", "--rollback-firmware", "0"], "rollback_firmware", "between 1 and"),
        (
            ["--stop-at", "20", "--rollback-firmware", "2147483647"],
            "rollback_firmware",
            "not exist",
        ),
    ],
)
def test_invalid_values_exit_2_naming_field_and_range(cli, args, field, allowed):
    src = [] if "--src-version" in args else ["--src-version", "1.0.0"]
    result = cli("batch", "create", cli.firmware, *src, *args)
    assert result.exit_code == 2, result.output
    assert f"error: {field}: " in result.stderr
    assert allowed in result.stderr


def test_the_batch_own_firmware_is_no_rollback_firmware(cli):
    args = ("--src-version", "1.0.0", "--stop-at", "20", "--rollback-firmware", cli.firmware)
    for dry in ((), ("--dry-run",)):
        result = cli("batch", "create", cli.firmware, *args, *dry)
        assert result.exit_code == 2, result.output
        assert "error: rollback_firmware: must not be the batch's own version 2.0.0" in (
            result.stderr
        )


def test_full_firmware_needs_source_versions(cli):
    result = cli("batch", "create", cli.firmware)
    assert result.exit_code == 2
    assert "src_version: is required for a full firmware" in result.stderr


def test_unknown_firmware_exits_2(cli):
    result = cli("batch", "create", "999", "--src-version", "1.0.0")
    assert result.exit_code == 2
    assert "firmware 999 not found" in result.stderr


def test_verify_timeout_range(cli):
    result = cli("verify", cli.firmware, "--device", "dev00000", "--timeout", "2000")
    assert result.exit_code == 2
    assert "error: timeout: must be between 1 and 1440 minutes" in result.stderr


def test_batch_list_and_show_without_batches(cli):
    assert cli("batch", "list", "--json").stdout.strip() == "[]"
    result = cli("batch", "show", "nope")
    assert result.exit_code == 2 and "batch nope not found" in result.stderr
    for command in ("pause", "resume", "promote"):
        result = cli("batch", command, "nope")
        assert result.exit_code == 2 and "batch nope not found" in result.stderr


def test_dry_run_prints_the_numbers_and_creates_nothing(cli):
    """No Temporal runs here: a create that started a workflow could not succeed."""
    args = ("batch", "create", cli.firmware, "--src-version", "1.0.0", "--rate", "10")
    result = cli(*args, "--pickup-timeout", "15", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["dry_run"], shown["targets"], shown["by_source_version"]) == (
        True,
        1,
        {"1.0.0": 1},
    )
    assert (shown["skipped"], shown["offline"], shown["busy"], shown["push_minutes"]) == (
        0,
        0,
        0,
        0,
    )
    text = cli(*args, "--dry-run").stdout
    assert "dry run, nothing created" in text
    assert "1 devices targeted; from 1.0.0: 1" in text
    assert "at 10 devices per minute" in text
    assert "last push ~" in text and "(under a minute from the start)" in text
    gated = (
        "--phase",
        "50",
        "--promote",
        "manual",
        "--window",
        "0 2 * * *",
        "--window-minutes",
        "30",
    )
    text = cli(*args, *gated, "--dry-run").stdout
    assert "phases (devices started by each, cumulative): 100%: 1 (+1)" in text
    assert "in 1 maintenance window" in text
    engine = make_engine(f"sqlite:///{cli.db}")
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Batch)).one() == 0
        assert session.exec(select(func.count()).select_from(Task)).one() == 0
    engine.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--src-version", "1.0.0", "--rate", "5"], "error: rate: must be between 10 and 1000"),
        (["--src-version", "1.0.0", "--pickup-timeout", "0"], "error: pickup_timeout: "),
        ([], "src_version: is required for a full firmware"),
    ],
)
def test_dry_run_refuses_what_create_refuses(cli, args, message):
    result = cli("batch", "create", cli.firmware, *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_create_help_describes_its_own_options_too(cli):
    out = cli("batch", "create", "--help").stdout
    assert "Create nothing: check the options" in out and "Wait for the batch to finish" in out
    assert "--no-wait" not in out and "--no-dry-run" not in out


# --- reading batches: what a new user trips over (issue 13) ---------------------------------------

TASK_STATES = "to_be_pushed, pushed, in_upgrade, updated, failed or canceled"


def _canceled_batch(cli) -> str:
    """A finished batch of firmware 2.0.0: one device updated, one canceled, two skipped."""
    engine = make_engine(f"sqlite:///{cli.db}")
    pk, names = make_fleet(engine, 2)
    with Session(engine) as session:
        devices = session.exec(select(Device).where(Device.product_key == pk)).all()
        session.add(Batch(id="b0000001", firmware_id=int(cli.firmware), product_key=pk,
                          module="default", target_version="2.0.0", state="canceled",
                          skipped=2, total=2))  # fmt: skip
        for device, (state, reason) in zip(
            devices, (("updated", None), ("canceled", "canceled")), strict=True
        ):
            session.add(Task(batch_id="b0000001", device_id=device.id, product_key=pk,
                             device_name=device.name, module="default", from_version="1.0.0",
                             target_version="2.0.0", state=state, reason=reason))  # fmt: skip
        session.commit()
    engine.dispose()
    return "b0000001"


@pytest.mark.parametrize(
    ("args", "field", "allowed"),
    [
        (["batch", "tasks", "b0000001", "--state", "nonsense"], "state", TASK_STATES),
        (["batch", "tasks", "b0000001", "--reason", "gremlins"], "reason", "offline, scheduled"),
        (["batch", "tasks", "nope", "--state", "nonsense"], "state", TASK_STATES),
        (["batch", "list", "--state", "running"], "state", "completed, canceled or failed"),
    ],
)
def test_a_filter_typo_exits_2_with_the_allowed_values(cli, args, field, allowed):
    """Not exit 0 with an empty table, which reads as "no such tasks"."""
    _canceled_batch(cli)
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert f"error: {field}: must be " in result.stderr and allowed in result.stderr
    assert result.stdout == ""


def test_tasks_filter_by_state_and_reason(cli):
    batch = _canceled_batch(cli)
    rows = json.loads(cli("batch", "tasks", batch, "--reason", "canceled", "--json").stdout)
    assert [t["state"] for t in rows] == ["canceled"]
    rows = json.loads(cli("batch", "tasks", batch, "--state", "updated", "--json").stdout)
    assert [t["state"] for t in rows] == ["updated"]


def test_a_canceled_task_reads_canceled_once(cli):
    result = cli("batch", "tasks", _canceled_batch(cli))
    assert result.exit_code == 0, result.output
    assert "canceled" in result.stdout and "(Canceled)" not in result.stdout


def test_show_says_why_devices_were_skipped(cli):
    result = cli("batch", "show", _canceled_batch(cli))
    assert result.exit_code == 0, result.output
    assert "2 tasks (canceled 1, updated 1), 2 already on 2.0.0" in result.stdout
    assert "skipped" not in result.stdout


def test_batch_list_in_80_columns_keeps_every_word_whole(cli, monkeypatch):
    batch = _canceled_batch(cli)
    wide = cli("batch", "list").stdout
    assert "┃ id" in wide and "canceled 1, updated 1" in wide  # COLUMNS=200: the table
    monkeypatch.setenv("COLUMNS", "80")
    narrow = cli("batch", "list").stdout
    assert "…" not in narrow and "┃" not in narrow
    line = f"{batch} static canceled: firmware {cli.firmware} -> 2.0.0, 2 tasks "
    assert line + "(canceled 1, updated 1), created " in narrow


def test_batch_tasks_in_80_columns_keeps_every_word_whole(cli, monkeypatch):
    batch = _canceled_batch(cli)
    wide = cli("batch", "tasks", batch).stdout
    assert "┃ device" in wide  # COLUMNS=200: the table
    monkeypatch.setenv("COLUMNS", "80")
    narrow = cli("batch", "tasks", batch).stdout
    assert "…" not in narrow and "┃" not in narrow
    lines = narrow.splitlines()
    assert len(lines) == 2 and all(line.startswith("dev") for line in lines), narrow
    assert lines[0].startswith("dev00000: updated (the device now reports 1.0.0")  # its note too
    assert lines[0].endswith("), 0 attempts, from 1.0.0")
    assert lines[1] == "dev00001: canceled, 0 attempts, from 1.0.0"
