"""States, reasons and the seed's validation rules, shared by the CLI, the API and the workflows.

The string values are a contract with stored data and with the API: DO NOT CHANGE THEM.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from typing import TypeVar

from ota.errors import InvalidInput


class TaskState(StrEnum):
    TO_BE_PUSHED = "to_be_pushed"
    PUSHED = "pushed"
    IN_UPGRADE = "in_upgrade"
    UPDATED = "updated"
    FAILED = "failed"
    CANCELED = "canceled"


# A device with a task in one of these states has an ongoing update batch (seed).
ACTIVE_TASK_STATES = (TaskState.TO_BE_PUSHED, TaskState.PUSHED, TaskState.IN_UPGRADE)
FINAL_TASK_STATES = (TaskState.UPDATED, TaskState.FAILED, TaskState.CANCELED)


class PushOutcome(StrEnum):
    """What a push (or its re-check) found: the device was pushed, it is offline, or the task
    was already final (canceled, or recorded by the bridge meanwhile)."""

    PUSHED = "pushed"
    OFFLINE = "offline"
    FINAL = "final"


class ReportOutcome(StrEnum):
    """What a device's report means to its workflow: the bridge's `report` signal."""

    UPDATED = "updated"
    FAILED = "failed"


class TaskReason(StrEnum):
    """Why a task is where it is: the detail the seed shows beside To Be Pushed and Failed."""

    OFFLINE = "offline"
    SCHEDULED = "scheduled"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    TIMEOUT = "timeout"
    NO_RESPONSE = "no_response"  # pushed, but no progress within the batch's pickup timeout
    CANCELED = "canceled"
    VERSION_MISMATCH = "version_mismatch"
    UPDATE_FAILED = "update_failed"  # progress -1
    DOWNLOAD_FAILED = "download_failed"  # progress -2
    VERIFY_FAILED = "verify_failed"  # progress -3: checksum or signature
    FLASH_FAILED = "flash_failed"  # progress -4
    PAUSED = "paused"  # the batch is paused (by the operator or its stop rule): not pushed yet
    WINDOW = "window"  # outside the batch's maintenance window: pushed when the next one opens
    PHASE = "phase"  # beyond a phase gate: pushed once the phase before is promoted


PROGRESS_FAILURES = {
    -1: TaskReason.UPDATE_FAILED,
    -2: TaskReason.DOWNLOAD_FAILED,
    -3: TaskReason.VERIFY_FAILED,
    -4: TaskReason.FLASH_FAILED,
}

REASON_LABELS = {
    TaskReason.OFFLINE: "Device Offline",
    TaskReason.SCHEDULED: "Timing",
    TaskReason.RATE_LIMITED: "Rate Limited",
    TaskReason.BUSY: "Device has another ongoing update batch",
    TaskReason.TIMEOUT: "Timed out",
    TaskReason.NO_RESPONSE: "No response to the push",
    TaskReason.CANCELED: "Canceled",
    TaskReason.VERSION_MISMATCH: "Reported a version that is neither current nor target",
    TaskReason.UPDATE_FAILED: "Update failed (-1)",
    TaskReason.DOWNLOAD_FAILED: "Download failed (-2)",
    TaskReason.VERIFY_FAILED: "Verification failed (-3)",
    TaskReason.FLASH_FAILED: "Flashing failed (-4)",
    TaskReason.PAUSED: "Batch paused",
    TaskReason.WINDOW: "Waiting for the maintenance window",
    TaskReason.PHASE: "Waiting for the phase gate",
}


class BatchKind(StrEnum):
    VERIFY = "verify"
    STATIC = "static"
    DYNAMIC = "dynamic"


class BatchState(StrEnum):
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"  # pushes nothing new until resumed; pushed devices finish
    COMPLETED = "completed"
    CANCELED = "canceled"
    # Refused by its workflow (started from the Temporal CLI with input out of range): never ran;
    # its state_note says why.
    FAILED = "failed"


class StopOn(StrEnum):
    """Which failed devices a batch's stop rule counts (AWS IoT Jobs' failureType)."""

    ALL = "all"
    FAILED = "failed"  # the device reported a failure (or a wrong version)
    TIMEOUT = "timeout"


class StopAction(StrEnum):
    PAUSE = "pause"
    CANCEL = "cancel"


# A batch in one of these states is not over: it may still push (a paused one, once resumed).
OPEN_BATCH_STATES = (BatchState.SCHEDULED, BatchState.IN_PROGRESS, BatchState.PAUSED)


class Target(StrEnum):
    ALL = "all"
    SELECTED = "selected"
    PHASED = "phased"


class CancelScope(StrEnum):
    SCHEDULED = "scheduled"  # static: scheduled tasks only; dynamic: the policy only
    ALL = "all"  # also to_be_pushed, pushed and in_upgrade tasks


class FirmwareType(StrEnum):
    FULL = "full"
    DIFF = "diff"


class FirmwareState(StrEnum):
    UNVERIFIED = "unverified"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"


class SignMethod(StrEnum):
    MD5 = "MD5"
    SHA256 = "SHA256"

    @property
    def wire(self) -> str:
        """The spelling devices expect: the SDKs reject "MD5"."""
        return "Md5" if self is SignMethod.MD5 else "SHA256"


# --- the seed's limits -------------------------------------------------------------------------

FIRMWARE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{3,31}$")
MODULE_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
# The seed allows [a-z0-9_-]; real versions are 1.2.3, so "." is accepted too.
VERSION_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")
PROGRESS_STEP_RE = re.compile(r"\s*-?[0-9]{1,8}\s*", re.ASCII)  # the SDKs send "45"
DESCRIPTION_MAX = 100
# Alibaba's DeviceName rule.
# /products/{pk}/devices/import is the CSV import: a device of that name could be listed but not
# addressed at /products/{pk}/devices/{name}. The lookahead puts it in the API's schema too.
RESERVED_DEVICE_NAMES = ("import",)
_RESERVED = "|".join(map(re.escape, RESERVED_DEVICE_NAMES))
DEVICE_NAME_RE = re.compile(rf"^(?!({_RESERVED})$)[A-Za-z0-9_\-@.:]{{4,32}}$")
FIRMWARE_EXTENSIONS = (".tar.gz", ".bin", ".tar", ".gz", ".zip", ".gzip")
DEFAULT_MODULE = "default"

RATE_MIN, RATE_MAX = 10, 1000  # devices pushed per minute
TIMEOUT_MIN, TIMEOUT_MAX = 1, 1440  # minutes, from the device's first progress report
SCHEDULE_MIN, SCHEDULE_MAX = timedelta(minutes=5), timedelta(days=7)
MAX_RETRIES_CHOICES = (1, 2, 5)
# Retry interval choices in minutes; None is "Do Not Retry", 0 "Retry Immediately".
RETRY_INTERVALS: dict[str, int | None] = {
    "none": None,
    "0": 0,
    "10m": 10,
    "30m": 30,
    "1h": 60,
    "24h": 1440,
}
PERCENT_MIN, PERCENT_MAX = 1, 100
STOP_MIN_MIN, STOP_MIN_MAX = 1, 100_000  # executed devices before a stop rule may trip
MAX_IN_FLIGHT_MIN, MAX_IN_FLIGHT_MAX = 1, 100_000  # devices pushed or upgrading at once
PHASES_MAX = 10  # gated phases of a batch (hawkBit's default UI offers up to 10 groups too)
# The exponential ramp (AWS IoT Jobs' exponentialRate: base 1 to 1000, factor 1.1 to 5).
RAMP_BASE_MIN, RAMP_BASE_MAX = 1, 1000  # devices per minute at first
RAMP_FACTOR_MIN, RAMP_FACTOR_MAX = 1.1, 5.0
RAMP_EVERY_MIN, RAMP_EVERY_MAX = 1, 100_000  # succeeded devices per step
WINDOW_MINUTES_MIN, WINDOW_MINUTES_MAX = 1, 1440  # a maintenance window's length
# Batch ids: new_batch_id's hex, and what a Temporal workflow id and the 64-character column hold.
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Firmware and task ids are INTEGER columns: 4 bytes on PostgreSQL. A larger id names nothing,
# and must not reach the database, which refuses it (PostgreSQL) or overflows (SQLite's driver).
ID_MIN, ID_MAX = 1, 2**31 - 1


def id_in_range(value: int) -> bool:
    return ID_MIN <= value <= ID_MAX


E = TypeVar("E", bound=StrEnum)


def validate_choice(enum: type[E], value: str | None, field: str) -> E | None:
    """A filter's value as its enum (None or "": no filter). A typo must not read as "nothing
    matches": it names the field and every value allowed."""
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        raise InvalidInput(field, f"must be {choices_text([m.value for m in enum])}") from None


def choices_text(values: Sequence[object]) -> str:
    """The values a field takes, as a refusal says them: "a, b or c"."""
    shown = [str(v) for v in values]
    return ", ".join(shown[:-1]) + f" or {shown[-1]}" if len(shown) > 1 else shown[0]


def validate_firmware_name(name: str) -> str:
    if not FIRMWARE_NAME_RE.fullmatch(name or ""):
        raise InvalidInput(
            "name",
            "must be 4 to 32 characters of letters, digits and underscores, "
            "and must not start with an underscore",
        )
    return name


def validate_module(module: str | None) -> str:
    module = module or DEFAULT_MODULE
    if not MODULE_RE.fullmatch(module):
        raise InvalidInput(
            "module", "must be 1 to 64 characters of lowercase letters, digits, '-' and '_'"
        )
    return module


def validate_version(version: str, field: str = "version") -> str:
    if not VERSION_RE.fullmatch(version or ""):
        raise InvalidInput(
            field, "must be 1 to 64 characters of lowercase letters, digits, '-', '_' and '.'"
        )
    return version


def version_sort_key(version: str) -> list[tuple[int, int | str]]:
    """Natural order, so 1.10 comes after 1.9. ASCII digits only: '\u00b2'.isdigit() is true
    and int() refuses it, and a row stored before the bridge checked versions may hold one."""
    parts = re.split(r"([0-9]+)", version)
    return [(0, int(p)) if p.isascii() and p.isdecimal() else (1, p) for p in parts if p]


def is_newer(version: str, than: str) -> bool:
    """`version` comes after `than` in natural order. An update to a version that is not newer
    than the module's is a downgrade: devices on our SDK refuse it unless the push says it is
    intended (ota.protocol.EXT_DOWNGRADE), which the platform says when a batch goes back."""
    return version_sort_key(version) > version_sort_key(than)


def validate_description(description: str | None) -> str | None:
    if description is not None and len(description) > DESCRIPTION_MAX:
        raise InvalidInput("description", f"must be at most {DESCRIPTION_MAX} characters")
    return description


def firmware_extension(filename: str) -> str:
    lower = filename.lower()
    for ext in FIRMWARE_EXTENSIONS:  # .tar.gz before .gz
        if lower.endswith(ext):
            return ext
    raise InvalidInput("file", "must be a .bin, .tar, .gz, .tar.gz, .zip or .gzip file")


def validate_timeout(minutes: int | None, field: str = "timeout") -> int | None:
    if minutes is not None and not TIMEOUT_MIN <= minutes <= TIMEOUT_MAX:
        raise InvalidInput(field, f"must be between {TIMEOUT_MIN} and {TIMEOUT_MAX} minutes")
    return minutes


def phased_count(total: int, percent: int) -> int:
    """The seed: the count is rounded down, and at least one device."""
    return max(1, total * percent // 100) if total else 0


def parse_progress_step(step: object) -> int | None:
    """A progress step is a string in the SDKs and sometimes a number; None if neither."""
    if isinstance(step, bool):
        return None
    if isinstance(step, int):
        value = step
    elif isinstance(step, str):
        # ASCII digits only: int() also takes "\u0665" (Arabic-Indic 5), "4_5" and "+7".
        if not PROGRESS_STEP_RE.fullmatch(step):
            return None
        value = int(step)
    else:
        return None
    if value in PROGRESS_FAILURES or 0 <= value <= 100:
        return value
    return None


def contradiction(state: str, target_version: str, device_version: str | None) -> str | None:
    """What to say beside a final task whose device now reports otherwise: failed or canceled
    although it runs the target (its report came too late, or the cancel came after it had
    flashed), or updated although it runs something else (it rolled back). The task's state
    stays as recorded (final states are final); the console and the CLI show this note."""
    if device_version is None:
        return None
    if state in (TaskState.FAILED, TaskState.CANCELED) and device_version == target_version:
        return f"the device now reports {device_version}, the target version"
    if state == TaskState.UPDATED and device_version != target_version:
        return f"the device now reports {device_version}, not {target_version}"
    return None


def judge_version_report(
    state: TaskState, from_version: str | None, target_version: str, reported: str
) -> ReportOutcome | None:
    """What a version report means to an ongoing task: updated, failed (retry or fail), or None.

    The seed: a device in To Be Pushed or Pushed that reports a version that is neither its current
    nor the target version has failed, and so has one In Upgrade reporting any non-target version.
    """
    if reported == target_version:
        progressing = state in (TaskState.PUSHED, TaskState.IN_UPGRADE)
        return ReportOutcome.UPDATED if progressing else None
    if state == TaskState.IN_UPGRADE:
        return ReportOutcome.FAILED
    if state in (TaskState.TO_BE_PUSHED, TaskState.PUSHED) and reported != from_version:
        return ReportOutcome.FAILED
    return None
