"""The options of gated phases, the ramp and maintenance windows (ota/batch_options.py): each rule
between them refused naming the field, the CLI and the API refusing before anything is created."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from ota.batch_options import BY_NAME as OPT
from ota.batch_options import BatchOptions, check_options, read_option, read_options
from ota.db.engine import make_engine
from ota.db.models import Batch, Task
from ota.errors import InvalidInput
from tests.test_api_batches import client  # noqa: F401 (a fixture)
from tests.test_api_support import assert_problem, firmware, fleet
from tests.test_batch_cli import cli  # noqa: F401 (a fixture)


def checked(**values) -> BatchOptions:
    options = BatchOptions(**{**read_options({}), "src_versions": ["1.0.0"], **values})
    check_options(options)
    return options


RAMP = {"rate_per_minute": 100, "ramp_base": 10}
WINDOW = {"window": "0 2 * * *", "window_minutes": 60}


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        # the ramp
        ({"ramp_factor": 3.0}, "ramp_base", "is required with ramp_factor or ramp_every"),
        ({"ramp_every": 5}, "ramp_base", "is required with ramp_factor or ramp_every"),
        ({"ramp_base": 10}, "rate_per_minute", "is required with ramp_base"),
        ({**RAMP, "ramp_base": 101}, "ramp_base", "must not exceed rate (100 devices per minute)"),
        ({**RAMP, "ramp_base": 0}, "ramp_base", "between 1 and 1000 devices per minute"),
        ({**RAMP, "ramp_factor": 1.0}, "ramp_factor", "between 1.1 and 5"),
        ({**RAMP, "ramp_factor": 5.5}, "ramp_factor", "between 1.1 and 5"),
        ({**RAMP, "ramp_factor": "2"}, "ramp_factor", "must be a number"),
        ({**RAMP, "ramp_every": 0}, "ramp_every", "between 1 and 100000 devices"),
        # windows
        ({"window": "0 2 * * *"}, "window_minutes", "window and window_minutes are given together"),
        ({"window_minutes": 60}, "window_minutes", "window and window_minutes are given together"),
        ({"window_tz": "Asia/Shanghai"}, "window_tz", "is given only with window"),
        ({**WINDOW, "window": "0 2 * *"}, "window", "5 fields"),
        ({**WINDOW, "window": "0 0 30 2 *"}, "window", "not a valid cron expression"),
        ({**WINDOW, "window_minutes": 0}, "window_minutes", "between 1 and 1440 minutes"),
        ({**WINDOW, "window_minutes": 1441}, "window_minutes", "between 1 and 1440 minutes"),
        ({**WINDOW, "window_tz": "Mars/Olympus"}, "window_tz", "IANA time zone"),
        # phases
        ({"promote_at": 90}, "phases", "are required with promote_at or promote"),
        ({"promote": "manual"}, "phases", "are required with promote_at or promote"),
        ({"phases": [10]}, "promote_at", "needs promote_at or promote manual"),
        ({"phases": [10], "promote": "manual", "promote_at": 90}, "promote_at", "not taken"),
        ({"phases": [10], "promote": "sometimes"}, "promote", "must be auto or manual"),
        ({"phases": [10], "promote_at": 0}, "promote_at", "between 1 and 100 percent"),
        ({"phases": [10, 5], "promote_at": 90}, "phases", "must increase"),
        ({"phases": [10, 10], "promote_at": 90}, "phases", "must increase"),
        ({"phases": [0, 10], "promote_at": 90}, "phases", "0 must be a whole number between 1"),
        ({"phases": [101], "promote_at": 90}, "phases", "101 must be a whole number between 1"),
        ({"phases": list(range(1, 12)), "promote_at": 90}, "phases", "at most 10 phases"),
        (
            {"phases": [10], "promote_at": 90, "policy": "dynamic"},
            "phases",
            "need a static batch",
        ),
    ],
)
def test_each_rollout_rule_names_its_field(values, field, message):
    with pytest.raises(InvalidInput) as err:
        checked(**values)
    assert (err.value.field, message in err.value.message) == (field, True), err.value


@pytest.mark.parametrize(
    "values",
    [
        {**RAMP},
        {**RAMP, "ramp_base": 100, "ramp_factor": 1.1, "ramp_every": 100_000},  # base == rate
        {**RAMP, "ramp_factor": 5},  # a whole number is a number
        {**WINDOW},
        {**WINDOW, "window_tz": "Asia/Shanghai", "window_minutes": 1440},
        {"phases": [1, 10, 100], "promote_at": 90},
        {"phases": [1, 10], "promote": "manual"},
        {"phases": list(range(10, 101, 10)), "promote_at": 100},  # 10 phases
        {**RAMP, **WINDOW, "phases": [5], "promote_at": 95, "stop_at": 20},
    ],
)
def test_rollout_combinations_accepted(values):
    assert {k: getattr(checked(**values), k) for k in values} == values


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("1,10,100", [1, 10, 100]),
        (" 1, 10 ,", [1, 10]),  # blanks dropped
        ([1, 10], [1, 10]),
        (["1", "10,50"], [1, 10, 50]),  # repeated --phase, one of them a list
        (10.0, [10]),  # JSON's 10.0 is a whole number
        ([10.0, 20], [10, 20]),
        (None, []),
    ],
)
def test_phases_are_read_from_each_spelling(sent, read):
    assert read_option(OPT["phases"], sent) == read


@pytest.mark.parametrize("sent", ["x", "10.5", ["10", "y"], 12.5, "1e400"])
def test_a_phase_that_is_no_whole_number_names_phases(sent):
    with pytest.raises(InvalidInput) as err:
        read_option(OPT["phases"], sent)
    assert err.value.field == "phases"
    assert "must be a whole number between 1 and 100" in err.value.message


# --- the CLI and the API refuse before anything is created ---


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "0 2 * *", "--window-minutes", "60"], "error: window: must be a cron"),
        (["--window", "0 2 * * *"], "error: window_minutes: window and window_minutes are"),
        (
            ["--window", "0 2 * * *", "--window-minutes", "60", "--window-tz", "Nowhere"],
            "window_tz",
        ),
        (["--phase", "10"], "error: promote_at: a phased rollout needs promote_at or promote"),
        (["--phase", "x", "--promote", "manual"], "error: phase: 'x' must be a whole number"),
        (["--phase", "50", "--phase", "10", "--promote-at", "90"], "error: phase: must increase"),
        (["--promote-at", "90"], "error: phase: are required with promote_at or promote"),
        (["--ramp-base", "5"], "error: rate: is required with ramp_base"),
        (["--rate", "10", "--ramp-base", "20"], "error: ramp_base: must not exceed rate"),
        (["--ramp-factor", "3"], "error: ramp_base: is required with ramp_factor"),
    ],
)
def test_the_cli_refuses_a_rollout_option_before_creating_anything(cli, args, message):  # noqa: F811
    for dry in ((), ("--dry-run",)):
        result = cli("batch", "create", cli.firmware, "--src-version", "1.0.0", *args, *dry)
        assert result.exit_code == 2, result.output
        assert message in result.stderr, result.stderr
    engine = make_engine(f"sqlite:///{cli.db}")
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Batch)).one() == 0
        assert session.exec(select(func.count()).select_from(Task)).one() == 0
    engine.dispose()


API_CASES = [
    ({"window": "0 2 * *", "window_minutes": 60}, "window", "5 fields"),
    ({"window": "0 0 30 2 *", "window_minutes": 60}, "window", "not a valid cron expression"),
    ({"window": "0 2 * * *"}, "window_minutes", "given together"),
    ({**WINDOW, "window_tz": "Mars/Olympus"}, "window_tz", "IANA time zone"),
    ({"phases": [10]}, "promote_at", "needs promote_at or promote manual"),
    ({"phases": "1,10", "promote_at": 101}, "promote_at", "between 1 and 100 percent"),
    ({"phases": [10], "promote": "manual", "promote_at": 50}, "promote_at", "not taken"),
    ({"promote_at": 90}, "phases", "are required with promote_at"),
    ({"phases": "x", "promote_at": 90}, "phases", "'x' must be a whole number"),
    ({"phases": [10.5], "promote_at": 90}, "phases", "must be a whole number"),
    ({"rate_per_minute": 10, "ramp_base": 20}, "ramp_base", "must not exceed rate"),
    ({"ramp_base": 5}, "rate_per_minute", "is required with ramp_base"),
]


async def test_the_api_refuses_a_rollout_option_before_creating_anything(client, temporal_env):  # noqa: F811
    # A product of its own: other tests' workflows on the shared server carry "pk1".
    pk = await fleet(client, pk=f"ro{uuid.uuid4().hex[:8]}", versions=["1.0.0"] * 3)
    fw = await firmware(client, pk)
    url = f"/api/v1/firmware/{fw['id']}/batches"
    for change, field, detail in API_CASES:
        for dry in ("", "?dry_run=true"):
            body = {"src_versions": ["1.0.0"], **change}
            problem = assert_problem(await client.post(url + dry, json=body), 422, field)
            assert detail in problem["detail"], (change, problem)
    assert (await client.get("/api/v1/batches")).json()["items"] == []
    assert [w async for w in temporal_env.client.list_workflows(f'OtaProductKey = "{pk}"')] == []
    # The same options, right, are taken (the dry run: nothing started here either).
    good = {"src_versions": ["1.0.0"], **WINDOW, "phases": "1,50", "promote_at": 90}
    r = await client.post(url + "?dry_run=true", json=good)
    assert r.status_code == 200, r.text
