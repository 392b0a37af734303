"""The seed's limits as pure rules."""

import pytest

from ota import domain
from ota.domain import TaskState
from ota.errors import InvalidInput


@pytest.mark.parametrize("name", ["abcd", "A_1_", "x" * 32, "fw1_release"])
def test_firmware_name_accepts_seed_names(name):
    assert domain.validate_firmware_name(name) == name


@pytest.mark.parametrize("name", ["abc", "_abcd", "x" * 33, "ab-cd", "ab cd", ""])
def test_firmware_name_rejects_with_field(name):
    with pytest.raises(InvalidInput) as err:
        domain.validate_firmware_name(name)
    assert err.value.field == "name"
    assert "4 to 32" in err.value.message


def test_phased_count_rounds_down_with_at_least_one():
    assert domain.phased_count(10, 15) == 1
    assert domain.phased_count(10, 5) == 1
    assert domain.phased_count(1000, 33) == 330
    assert domain.phased_count(0, 50) == 0


@pytest.mark.parametrize(
    "state,reported,expected",
    [
        (TaskState.PUSHED, "2.0", "updated"),
        (TaskState.IN_UPGRADE, "2.0", "updated"),
        (TaskState.PUSHED, "1.0", None),  # still the current version
        (TaskState.PUSHED, "1.5", "failed"),  # neither current nor target
        (TaskState.TO_BE_PUSHED, "1.5", "failed"),
        (TaskState.IN_UPGRADE, "1.0", "failed"),  # in upgrade: anything but the target
        (TaskState.UPDATED, "1.5", None),
    ],
)
def test_judge_version_report(state, reported, expected):
    assert domain.judge_version_report(state, "1.0", "2.0", reported) == expected


@pytest.mark.parametrize("step,value", [("45", 45), (45, 45), ("-3", -3), ("100", 100)])
def test_progress_step_accepts_strings_and_numbers(step, value):
    assert domain.parse_progress_step(step) == value


@pytest.mark.parametrize("step", ["abc", None, 101, "-5", 4.5, True])
def test_progress_step_rejects_the_rest(step):
    assert domain.parse_progress_step(step) is None


def test_sign_method_wire_spelling():
    assert domain.SignMethod.MD5.wire == "Md5"
    assert domain.SignMethod.SHA256.wire == "SHA256"


@pytest.mark.parametrize(
    "check", [domain.validate_firmware_name, domain.validate_module, domain.validate_version]
)
def test_a_trailing_newline_is_not_accepted(check):
    with pytest.raises(InvalidInput):
        check("abcd\n")
