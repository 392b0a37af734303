"""ota.batch_options: each option is declared once, and the CLI, the API's schema, the console's
form and the workflow's input are made from it; its values are checked there, once."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from ota.api.batch_body import BatchCreate, body_options
from ota.api.batch_form import batch_form, option_facts
from ota.batch_options import BY_NAME as OPT
from ota.batch_options import (
    DEFAULTS,
    OPTIONS,
    BatchOptions,
    Widget,
    check_options,
    read_option,
    read_options,
    retry_text,
    schedule_problem,
)
from ota.contracts import BatchInput
from ota.db.models import Batch
from ota.errors import InvalidInput
from ota.services.batches import batch_public
from starter.cli import app


def checked(**values):
    options = BatchOptions(**{**read_options({}), "src_versions": ["1.0.0"], **values})
    check_options(options)
    return options


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"rate_per_minute": 9}, "rate_per_minute", "between 10 and 1000 devices per minute"),
        ({"rate_per_minute": True}, "rate_per_minute", "whole number"),
        ({"timeout_minutes": 1441}, "timeout_minutes", "between 1 and 1440 minutes"),
        ({"max_retries": 3}, "max_retries", "must be 1, 2 or 5"),
        ({"max_retries": True}, "max_retries", "must be 1, 2 or 5"),  # True == 1 in Python
        ({"retry_interval_minutes": 15}, "retry_interval", "one of none, 0, 10m, 30m, 1h, 24h"),
        ({"policy": "verify"}, "policy", "must be static or dynamic"),
        ({"target": "some"}, "target", "must be all, selected or phased"),
        ({"src_versions": ["V1"]}, "src_versions", "lowercase"),
        ({"device_names": ["a b"], "target": "selected"}, "device_names", "4 to 32"),
        ({"target": "phased", "percent": 0}, "percent", "between 1 and 100"),
        ({"target": "phased"}, "percent", "required for a phased batch"),
        ({"percent": 5}, "percent", "only a phased batch"),
        ({"target": "selected"}, "device_names", "needs one or more"),
        ({"device_names": ["dev-1"]}, "device_names", "only with --target selected"),
        ({"policy": "dynamic", "target": "phased", "percent": 5}, "target", "dynamic batch"),
        ({"scheduled_at": "soon"}, "scheduled_at", "ISO 8601"),
    ],
)
def test_a_wrong_value_is_named_by_its_api_name(values, field, message):
    with pytest.raises(InvalidInput) as err:
        checked(**values)
    assert (err.value.field, message in err.value.message) == (field, True), err.value


def test_the_seed_defaults_pass():
    assert checked() == BatchOptions(src_versions=["1.0.0"])
    assert checked(retry_interval_minutes=0, max_retries=5, rate_per_minute=1000).max_retries == 5


def test_a_dynamic_batch_is_not_scheduled():
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert checked(scheduled_at=soon).scheduled_at == soon
    with pytest.raises(InvalidInput, match="only a static batch"):
        checked(policy="dynamic", scheduled_at=soon)


def test_the_schedule_window():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert schedule_problem((now + timedelta(minutes=5)).isoformat(), now) is None
    assert schedule_problem((now + timedelta(days=7)).isoformat(), now) is None
    for bad in (now + timedelta(minutes=4), now + timedelta(days=7, seconds=1)):
        assert "5 minutes and 7 days" in schedule_problem(bad.isoformat(), now)  # type: ignore[operator]
    assert "time zone" in schedule_problem("2026-01-01T10:00:00", now)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "sent", "read"),
    [
        ("retry_interval_minutes", "none", None),
        ("retry_interval_minutes", "0", 0),
        ("retry_interval_minutes", "10m", 10),
        ("retry_interval_minutes", "1H", 60),
        ("retry_interval_minutes", "1440", 1440),
        ("retry_interval_minutes", 30, 30),
        ("retry_interval_minutes", None, None),
        ("target", "GRAY", "phased"),
        ("target", "SPECIFIC", "selected"),
        ("src_versions", "1.0", ["1.0"]),
        ("src_versions", ["1.0,1.1", " ", "1.2"], ["1.0", "1.1", "1.2"]),
        ("scheduled_at", 1_800_000_000_000, "2027-01-15T08:00:00+00:00"),
        ("max_retries", None, 1),
    ],
)
def test_spellings_are_read_into_the_stored_value(name, sent, read):
    assert read_option(OPT[name], sent) == read


def test_the_clouds_group_target_is_refused_with_its_reason():
    with pytest.raises(InvalidInput, match="device groups are not supported") as err:
        read_option(OPT["target"], "GROUP")
    assert err.value.field == "target"


def test_the_workflow_input_carries_every_option():
    names = {f.name for f in dataclasses.fields(BatchInput)}
    assert {o.name for o in OPTIONS} <= names
    assert BatchInput("b1", 7, rate_per_minute=60).rate_per_minute == 60


# --- what is made from the model ------------------------------------------------------------------


def test_the_api_schema_states_each_options_rule():
    props = BatchCreate.model_json_schema(by_alias=False)["properties"]
    for opt in OPTIONS:
        prop = props[opt.api]
        if opt.cloud:
            assert f"`{opt.cloud}`" in prop["description"], opt.name
        if opt.many and opt.pattern is not None:
            many, one = prop["anyOf"]
            assert many["items"]["pattern"] == one["pattern"] == opt.pattern.pattern
        elif opt.many:  # numbers: a list, one, or the console's "1,10,100"
            many, one, text = prop["anyOf"]
            assert (
                many["items"] == one == {"type": "integer", "minimum": opt.low, "maximum": opt.high}
            )
            assert text == {"type": "string"}
        elif opt.low is not None:
            assert (prop["minimum"], prop["maximum"]) == (opt.low, opt.high), opt.name
        if opt.choices:
            assert set(opt.choices) <= set(prop["enum"]), opt.name
            assert not set(opt.refused) & set(prop["enum"]), opt.name


def test_the_api_body_takes_the_cloud_names_and_reads_like_the_cli():
    body = BatchCreate.model_validate(
        {"SrcVersion": "1.0.0", "RetryInterval": "10m", "RetryCount": 2, "MaximumPerMinute": 60}
    )
    assert body_options(body) == {
        **DEFAULTS,
        "src_versions": ["1.0.0"],
        "retry_interval_minutes": 10,
        "max_retries": 2,
        "rate_per_minute": 60,
    }


def test_the_cli_has_a_flag_for_each_option(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    shown = CliRunner().invoke(app, ["batch", "create", "--help"]).stdout
    for opt in OPTIONS:
        assert opt.flag in shown, opt.flag
    for group in ("Targeting", "Pacing", "Retry", "Timeout"):
        assert group in shown


def test_the_console_form_has_each_option_with_a_widget():
    form = batch_form()
    rendered = {o.api: o for _, group in form["form_groups"] for o in group}
    wanted = {o.api for o in OPTIONS if o.widget is not Widget.OWN}
    assert set(rendered) == wanted
    retry = rendered["retry_interval"]
    assert [(value, chosen) for value, _, chosen in retry.choices][:2] == [
        ("null", True),  # Do Not Retry, the default
        ("0", False),
    ]
    assert [chosen for _, _, chosen in rendered["max_retries"].choices] == [True, False, False]


def test_options_without_a_column_are_kept_and_shown():
    """An option added later has no column: Batch.options keeps it, and the API, the CLI's
    --json and the console's batch page show it beside the seed's."""
    batch = Batch(id="b1", firmware_id=1, product_key="pk", module="default", target_version="2")
    batch.options = {"later_option": 5}
    shown = batch_public(batch, {})
    assert shown["later_option"] == 5
    assert "options" not in shown
    assert option_facts(shown) == []  # not a declared option: nothing to word it by


def test_batch_show_says_the_options_chosen_as_flags(capsys):
    from starter.batches import _print_batch

    shown = {
        **{k: v for k, v in DEFAULTS.items() if k not in ("policy", "device_names")},
        "id": "b1",
        "kind": "static",
        "state": "in_progress",
        "firmware_id": 1,
        "target_version": "2.0.0",
        "product_key": "pk",
        "module": "default",
        "total": 2,
        "skipped": 0,
        "counts": {},
        "src_versions": ["1.0.0", "1.1.0"],
        "rate_per_minute": 60,
        "retry_interval_minutes": 10,
    }
    _print_batch(shown)
    out = capsys.readouterr().out
    assert "--src-version 1.0.0,1.1.0 --rate 60 --retry-interval 10" in out
    assert "--max-retries" not in out  # the default


@pytest.mark.parametrize(
    ("interval", "retries", "text"),
    [
        (None, 1, "Do not retry"),
        (0, 2, "Retry immediately, at most 2 times"),
        (10, 2, "Retry in 10 minutes, at most 2 times"),
        (60, 1, "Retry in 1 hour, at most once"),
        (1440, 5, "Retry in 24 hours, at most 5 times"),
    ],
)
def test_retry_reads_as_the_seed_words_it(interval, retries, text):
    """Issue 13: the batch page said "after 0 min, at most 2x"; the seed says "Retry
    Immediately" and counts retries in words."""
    assert retry_text(interval, retries) == text
