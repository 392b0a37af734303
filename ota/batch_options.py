"""Every option of an update batch, declared once: its type, default, range or choices, help,
cloud API name and rule. The CLI's options (starter/batch_flags.py), the API's request body and
its OpenAPI schema (ota/api/batch_body.py), the console's form (ota/api/console.py and
_dialog_batch.html) and the workflow's input (ota.contracts.BatchInput, a subclass) are made from
the `BatchOptions` dataclass below, and every value is checked here, once, by `check_options`.

Adding an option: a field of BatchOptions (`option(...)`) and the workflow code that uses it.
Options the seed's `batches` columns do not hold are stored in `Batch.options` (JSON).

Only the standard library and ota's pure modules (ota.domain, ota.windows) may be imported here:
workflows import this module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, get_type_hints

from ota.domain import (
    DEVICE_NAME_RE,
    ID_MAX,
    ID_MIN,
    MAX_IN_FLIGHT_MAX,
    MAX_IN_FLIGHT_MIN,
    MAX_RETRIES_CHOICES,
    PERCENT_MAX,
    PERCENT_MIN,
    PHASES_MAX,
    RAMP_BASE_MAX,
    RAMP_BASE_MIN,
    RAMP_EVERY_MAX,
    RAMP_EVERY_MIN,
    RAMP_FACTOR_MAX,
    RAMP_FACTOR_MIN,
    RATE_MAX,
    RATE_MIN,
    RETRY_INTERVALS,
    SCHEDULE_MAX,
    SCHEDULE_MIN,
    STOP_MIN_MAX,
    STOP_MIN_MIN,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    VERSION_RE,
    WINDOW_MINUTES_MAX,
    WINDOW_MINUTES_MIN,
    BatchKind,
    StopAction,
    StopOn,
    Target,
    choices_text,
)
from ota.errors import InvalidInput
from ota.windows import cron_problem, zone_problem


class Group(StrEnum):
    """How the options are grouped in help and forms (as hawkBit groups a rollout's)."""

    TARGETING = "targeting"
    PACING = "pacing"
    RETRY = "retry"
    TIMEOUT = "timeout"
    SAFETY = "safety"


class Widget(StrEnum):
    """How the console's batch form shows an option."""

    NUMBER = "number"  # <input type=number>
    SELECT = "select"  # <select> of `choices`, labelled by `labels`
    TEXT = "text"  # <input type=text>, sent as typed (a list option: comma-separated)
    OWN = "own"  # the form has its own markup for it (checklists, radios, the schedule)


@dataclass(frozen=True)
class Option:
    """What one option is; `name` is BatchOptions' field (and the workflow input's)."""

    group: Group
    label: str  # the seed's name for it, as the console shows it
    help: str  # the CLI's --help, the API's description
    api: str = ""  # the API body's name (problems name it); default: `name`
    flag: str = ""  # the CLI's option; default: --api-name
    cloud: str | None = None  # Alibaba's cloud API name, accepted by the API as an alias
    # A number option's range, inclusive (a list of numbers: each item's); a float option (by its
    # type) takes any number in it.
    low: float | None = None
    high: float | None = None
    unit: str = ""  # said after the range: "must be between 1 and 1440 minutes"
    choices: tuple[Any, ...] = ()  # the values it may take (stored spelling)
    labels: tuple[str, ...] = ()  # the console's label of each choice
    # Other spellings the CLI and the API accept for a value: "10m" -> 10, the cloud's "GRAY".
    spellings: Mapping[str, Any] = field(default_factory=dict)
    # Spellings refused with their own message, e.g. the cloud's "GROUP" target.
    refused: Mapping[str, str] = field(default_factory=dict)
    allowed: str = ""  # how a refusal says what is allowed, when not its range or choices
    pattern: re.Pattern[str] | None = None  # a text option's, or each item's of a list option
    # A list: a repeatable CLI option (or comma-separated values), one value or a list in the API.
    many: bool = False
    rule: Callable[[Any], str | None] | None = None  # more to check: what is wrong, or None
    cloud_type: type | None = None  # another type the cloud API sends for it (epoch ms)
    from_cloud: Callable[[Any], Any] | None = None  # reads that into ours
    widget: Widget = Widget.OWN
    suggested: Any = None  # what the console's form starts with, where not the default
    example: str = ""  # the console's placeholder for a text option
    name: str = ""

    @property
    def cli_name(self) -> str:
        """How the CLI's messages name it: the flag without its dashes ("rate")."""
        return self.flag.removeprefix("--").replace("-", "_")


def option(default: Any = None, **spec: Any) -> Any:
    """A field of BatchOptions: its default, and what the Option says of it."""
    meta = {"option": Option(**spec)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def schedule_problem(value: str, now: datetime | None = None) -> str | None:
    """The seed: a time 5 minutes to 7 days from now, with its zone (ISO 8601)."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return "must be an ISO 8601 time, e.g. 2026-12-01T10:00:00+00:00"
    if at.tzinfo is None:
        return "must include a time zone, e.g. 2026-12-01T10:00:00+00:00"
    now = now or datetime.now(UTC)
    if not now + SCHEDULE_MIN <= at <= now + SCHEDULE_MAX:
        return "must be between 5 minutes and 7 days from now"
    return None


def _phases_problem(phases: list[int]) -> str | None:
    if len(phases) > PHASES_MAX:
        return f"at most {PHASES_MAX} phases"
    if any(b <= a for a, b in zip(phases, phases[1:], strict=False)):
        return "must increase: each phase is a cumulative percentage of the targets"
    return None


def _epoch_ms(value: Any) -> Any:
    """The cloud's ScheduleTime is epoch milliseconds; ours is ISO 8601."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, UTC).isoformat()
        except (OverflowError, OSError, ValueError):  # beyond any calendar: a 422, not a 500
            raise InvalidInput(
                "scheduled_at", "must be between 5 minutes and 7 days from now"
            ) from None
    return value or None


RETRY_SPELLINGS = {"none": None, **{k: v for k, v in RETRY_INTERVALS.items() if k != "none"}}
RETRY_SPELLINGS.update({str(v): v for v in RETRY_INTERVALS.values() if v})  # "10" minutes
RETRY_CHOICE_LABELS = (
    "Do Not Retry",
    "Retry Immediately",
    "Retry in 10 Minutes",
    "Retry in 30 Minutes",
    "Retry in 1 hour",
    "Retry in 24 hours",
)


def retry_text(interval_minutes: int | None, max_retries: int) -> str:
    """The retry options as a sentence in the seed's words ("Retry immediately, at most 2
    times", "Do not retry"): the batch page and the workflow's summary in the Temporal Web UI
    say it so, not in minutes and a multiplier."""
    if interval_minutes is None:
        return "Do not retry"
    label = dict(zip(RETRY_INTERVALS.values(), RETRY_CHOICE_LABELS, strict=True)).get(
        interval_minutes
    )
    when = label.capitalize() if label else f"Retry in {interval_minutes} minutes"
    times = "once" if max_retries == 1 else f"{max_retries} times"
    return f"{when}, at most {times}"


@dataclass(kw_only=True)
class BatchOptions:
    """What an operator chooses for a batch. `temporal workflow start --type BatchWorkflow` takes
    these names in its JSON input (ota.contracts.BatchInput)."""

    # --- targeting ---
    policy: str = option(
        BatchKind.STATIC.value,
        group=Group.TARGETING,
        label="Update Policy",
        help="static (devices matching now) or dynamic (also devices that match later).",
        choices=(BatchKind.STATIC.value, BatchKind.DYNAMIC.value),
        labels=("Static Update", "Dynamic Update"),
    )
    src_versions: list[str] = option(
        [],
        group=Group.TARGETING,
        label="Version number to be upgraded",
        help="A version to update from; repeatable. Required for a full firmware unless "
        "target is selected.",
        flag="--src-version",
        cloud="SrcVersion",
        pattern=VERSION_RE,
        allowed="1 to 64 characters of lowercase letters, digits, '-', '_' and '.'",
        many=True,
    )
    target: str = option(
        Target.ALL.value,
        group=Group.TARGETING,
        label="Apply Update to",
        help="all, selected or phased (cloud: ALL, SPECIFIC, GRAY).",
        cloud="TargetSelection",
        choices=tuple(t.value for t in Target),
        labels=("All Devices", "Selected Devices", "Phased Update"),
        spellings={"ALL": "all", "SPECIFIC": "selected", "GRAY": "phased"},
        refused={"GROUP": "device groups are not supported: use all, selected or phased"},
    )
    device_names: list[str] = option(
        [],
        group=Group.TARGETING,
        label="Devices",
        help="A device of the firmware's product; repeatable (target selected).",
        flag="--device",
        cloud="TargetDeviceName",
        pattern=DEVICE_NAME_RE,
        allowed="4 to 32 letters, digits and - _ @ . :",
        many=True,
    )
    percent: int | None = option(
        group=Group.TARGETING,
        label="Range (%)",
        help="1 to 100 (target phased): the share of the matching devices, rounded down, and "
        "at least one.",
        cloud="GrayPercent",
        low=PERCENT_MIN,
        high=PERCENT_MAX,
    )
    # --- pacing ---
    scheduled_at: str | None = option(
        group=Group.PACING,
        label="Scheduled Update",
        help="Start at this ISO 8601 time with a zone, 5 minutes to 7 days ahead (static "
        "only; the API also takes the cloud's epoch milliseconds).",
        flag="--at",
        cloud="ScheduleTime",
        rule=schedule_problem,
        cloud_type=int,
        from_cloud=_epoch_ms,
    )
    rate_per_minute: int | None = option(
        group=Group.PACING,
        label="Recipients per Minute",
        help="Devices pushed per minute, 10 to 1000; none: as fast as they can be started.",
        flag="--rate",
        cloud="MaximumPerMinute",
        low=RATE_MIN,
        high=RATE_MAX,
        unit="devices per minute",
        widget=Widget.NUMBER,
        suggested=100,
    )
    max_in_flight: int | None = option(
        group=Group.PACING,
        label="Maximum in Flight",
        help="At most this many devices pushed or upgrading at once, 1 to 100000 (a device "
        "offline at its push does not count until it reconnects). Unset: a batch without a "
        "rate gets OTA_MAX_IN_FLIGHT (default 1000), one with a rate none.",
        low=MAX_IN_FLIGHT_MIN,
        high=MAX_IN_FLIGHT_MAX,
        unit="devices",
        widget=Widget.NUMBER,
    )
    # --- pacing: the exponential ramp (AWS IoT Jobs' exponentialRate) ---
    ramp_base: int | None = option(
        group=Group.PACING,
        label="Ramp: First Rate (per Minute)",
        help="Begin at this many devices a minute, 1 to 1000, and multiply it by --ramp-factor "
        "each time --ramp-every more devices have updated, up to --rate (required).",
        low=RAMP_BASE_MIN,
        high=RAMP_BASE_MAX,
        unit="devices per minute",
        widget=Widget.NUMBER,
    )
    ramp_factor: float = option(
        2.0,
        group=Group.PACING,
        label="Ramp: Factor",
        help="What each step multiplies the ramp's rate by, 1.1 to 5.",
        low=RAMP_FACTOR_MIN,
        high=RAMP_FACTOR_MAX,
        widget=Widget.NUMBER,
    )
    ramp_every: int = option(
        10,
        group=Group.PACING,
        label="Ramp: Step Every (Updated Devices)",
        help="Updated devices (running the new version) per step of the ramp.",
        low=RAMP_EVERY_MIN,
        high=RAMP_EVERY_MAX,
        unit="devices",
        widget=Widget.NUMBER,
    )
    # --- pacing: maintenance windows (AWS IoT Jobs' maintenanceWindows) ---
    window: str | None = option(
        group=Group.PACING,
        label="Maintenance Window (Cron)",
        help="Push only inside windows that open at these times: a cron expression of 5 "
        'fields ("0 2 * * *": 02:00 every day), read in --window-tz; devices pushed finish '
        "outside it. Needs --window-minutes.",
        rule=cron_problem,
        widget=Widget.TEXT,
        example="0 2 * * *",
    )
    window_minutes: int | None = option(
        group=Group.PACING,
        label="Window Length (Minutes)",
        help="How long each window stays open, 1 to 1440 minutes.",
        low=WINDOW_MINUTES_MIN,
        high=WINDOW_MINUTES_MAX,
        unit="minutes",
        widget=Widget.NUMBER,
    )
    window_tz: str = option(
        "UTC",
        group=Group.PACING,
        label="Window Time Zone",
        help="The IANA time zone the window's cron is read in, e.g. Asia/Shanghai.",
        rule=zone_problem,
        widget=Widget.TEXT,
        suggested="UTC",
    )
    # --- retry ---
    retry_interval_minutes: int | None = option(
        group=Group.RETRY,
        label="Retry Interval",
        help="After a failed attempt: none (do not retry), 0 (immediately), 10m, 30m, 1h or "
        "24h (the API also takes minutes: 0, 10, 30, 60, 1440).",
        api="retry_interval",
        cloud="RetryInterval",
        choices=tuple(dict.fromkeys(RETRY_INTERVALS.values())),
        labels=RETRY_CHOICE_LABELS,
        spellings=RETRY_SPELLINGS,
        allowed="one of none, 0, 10m, 30m, 1h, 24h",
        widget=Widget.SELECT,
    )
    max_retries: int = option(
        1,
        group=Group.RETRY,
        label="Maximum Retries",
        help="Attempts after the first: 1, 2 or 5.",
        cloud="RetryCount",
        choices=MAX_RETRIES_CHOICES,
        labels=tuple(map(str, MAX_RETRIES_CHOICES)),
        widget=Widget.SELECT,
    )
    # --- timeout ---
    timeout_minutes: int | None = option(
        group=Group.TIMEOUT,
        label="Timeout (Minutes)",
        help="Minutes from the device's first progress report, 1 to 1440.",
        flag="--timeout",
        cloud="TimeoutInMinutes",
        low=TIMEOUT_MIN,
        high=TIMEOUT_MAX,
        unit="minutes",
        widget=Widget.NUMBER,
    )
    pickup_timeout_minutes: int | None = option(
        group=Group.TIMEOUT,
        label="Pickup Timeout (Minutes)",
        help="Minutes from a push for the device to report any progress, 1 to 1440; a silent "
        "device is pushed again as a retry (after the retry interval, up to the maximum "
        "retries; never with no retry interval), then fails no_response. None: it stays "
        "pushed while silent.",
        flag="--pickup-timeout",
        low=TIMEOUT_MIN,
        high=TIMEOUT_MAX,
        unit="minutes",
        widget=Widget.NUMBER,
    )
    # --- safety: the failure-rate auto-stop (AWS IoT Jobs' abortConfig) ---
    stop_at: int | None = option(
        group=Group.SAFETY,
        label="Stop at Failure Rate (%)",
        help="Stop pushing once this share (1 to 100) of the executed devices (updated or "
        "failed) has failed; none: never stop.",
        low=PERCENT_MIN,
        high=PERCENT_MAX,
        unit="percent",
        widget=Widget.NUMBER,
    )
    stop_min: int = option(
        10,
        group=Group.SAFETY,
        label="Stop Only After (Devices)",
        help="Executed devices (updated or failed) before the stop rule may trip.",
        low=STOP_MIN_MIN,
        high=STOP_MIN_MAX,
        unit="devices",
        widget=Widget.NUMBER,
    )
    stop_on: str = option(
        StopOn.ALL.value,
        group=Group.SAFETY,
        label="Failures Counted",
        help="Which failures count: failed (the device reported a failure), timeout (timed "
        "out, or no response to the push), or all.",
        choices=tuple(s.value for s in StopOn),
        labels=("All failures", "Reported failures", "Timeouts"),
        widget=Widget.SELECT,
    )
    stop_action: str = option(
        StopAction.PAUSE.value,
        group=Group.SAFETY,
        label="When Stopped",
        help="pause (resume with `ota batch resume`) or cancel (as `ota batch cancel --all`).",
        choices=tuple(a.value for a in StopAction),
        labels=("Pause the batch", "Cancel the batch"),
        widget=Widget.SELECT,
    )
    # --- safety: gated phases (hawkBit's rollout groups) ---
    phases: list[int] = option(
        [],
        group=Group.SAFETY,
        label="Phases (Cumulative %)",
        help="Roll out in phases: cumulative percentages of the targets, increasing, e.g. "
        "--phase 1 --phase 10 --phase 100 (a last phase of 100 is added when missing). Each "
        "phase waits at a gate for --promote-at or --promote manual.",
        flag="--phase",
        low=PERCENT_MIN,
        high=PERCENT_MAX,
        allowed="a whole number between 1 and 100",
        many=True,
        rule=lambda phases: _phases_problem(phases),
        widget=Widget.TEXT,
        example="1,10,100",
    )
    promote_at: int | None = option(
        group=Group.SAFETY,
        label="Promote at Success (%)",
        help="Open a phase's gate once this share (1 to 100) of its devices run the new "
        "version (updated; a download is not enough).",
        low=PERCENT_MIN,
        high=PERCENT_MAX,
        unit="percent",
        widget=Widget.NUMBER,
    )
    promote: str = option(
        "auto",
        group=Group.SAFETY,
        label="Promotion",
        help="auto (at --promote-at) or manual (`ota batch promote` opens each gate).",
        choices=("auto", "manual"),
        labels=("When the phase succeeds", "By the operator"),
        widget=Widget.SELECT,
    )
    # --- safety: the rollback policy (Azure Device Update's) ---
    rollback_firmware_id: int | None = option(
        group=Group.SAFETY,
        label="Rollback Firmware (ID)",
        help="When the stop rule trips, push this firmware (of the same product and module, "
        "usable, a version other than the batch's) to the devices that failed by then, in a "
        "batch of its own; needs --stop-at.",
        api="rollback_firmware",
        low=ID_MIN,
        high=ID_MAX,
        widget=Widget.NUMBER,
    )


def _named(f: dataclasses.Field[Any]) -> Option:
    spec: Option = f.metadata["option"]
    api = spec.api or f.name
    return dataclasses.replace(
        spec, name=f.name, api=api, flag=spec.flag or "--" + api.replace("_", "-")
    )


OPTIONS: tuple[Option, ...] = tuple(_named(f) for f in dataclasses.fields(BatchOptions))
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# Each option's Python type, which the CLI and the API widen by what their clients may send.
TYPES: dict[str, Any] = get_type_hints(BatchOptions)
DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(BatchOptions)
}


def grouped() -> Iterator[tuple[Group, list[Option]]]:
    for group in Group:
        yield group, [o for o in OPTIONS if o.group is group]


# --- reading what a client sent ---


def _spelled(opt: Option, value: Any) -> Any:
    if isinstance(value, str):
        key = value.strip()
        if key in opt.refused:
            raise InvalidInput(opt.api, opt.refused[key])
        for spelling in (key, key.lower()):
            if spelling in opt.spellings:
                return opt.spellings[spelling]
    return value


def read_option(opt: Option, value: Any) -> Any:
    """A value as the CLI or the API gave it, in the stored spelling ("10m" -> 10); None and
    unset are the default. Only spellings are read here: `check_options` judges the value."""
    if value is None:
        return DEFAULTS[opt.name]
    if opt.from_cloud is not None:
        value = opt.from_cloud(value)
    if opt.many:
        items = [value] if isinstance(value, (str, int, float)) else list(value)
        # The CLI's repeated options may carry "1.0,1.1"; blanks are dropped.
        texts = [s.strip() for v in items for s in str(v).split(",") if s.strip()]
        return [_whole(opt, t) for t in texts] if TYPES[opt.name] == list[int] else texts
    return _spelled(opt, value)


def _whole(opt: Option, text: str) -> int:
    """An item of a list of numbers (`--phase 10`, "1,10,100", JSON's 10.0)."""
    try:
        number = float(text)
        if number.is_integer():
            return int(number)
    except (ValueError, OverflowError):
        pass
    raise InvalidInput(opt.api, f"{text!r} must be {opt.allowed}")


def read_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """BatchOptions' fields from what a client sent, keyed by option name (missing: default)."""
    return {o.name: read_option(o, values.get(o.name)) for o in OPTIONS}


# --- checking ---


def _problem(opt: Option, value: Any) -> str | None:
    """What is wrong with one option's value, or None."""
    if value is None:
        return None
    if opt.many:
        bad = [v for v in value if not _item_fits(opt, v)]
        if bad:
            return f"{bad[0]!r} must be {opt.allowed}"
        return opt.rule(value) if opt.rule else None
    if opt.choices:
        # By type too: True == 1 in Python, but true is no retry count.
        if any(c == value and type(c) is type(value) for c in opt.choices):
            return None
        return f"must be {opt.allowed or choices_text(opt.choices)}"
    if opt.low is not None:
        unit = f" {opt.unit}" if opt.unit else ""
        if TYPES[opt.name] is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number between {opt.low:g} and {opt.high:g}{unit}"
            if not opt.low <= value <= opt.high:  # type: ignore[operator]
                return f"must be between {opt.low:g} and {opt.high:g}{unit}"
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number between {opt.low} and {opt.high}{unit}"
        if not opt.low <= value <= opt.high:  # type: ignore[operator]
            return f"must be between {opt.low} and {opt.high}{unit}"
    if opt.pattern is not None and not opt.pattern.fullmatch(str(value)):
        return f"must be {opt.allowed}"
    return opt.rule(value) if opt.rule else None


def _item_fits(opt: Option, item: Any) -> bool:
    """An item of a list option: a text matching its pattern, or a whole number in its range."""
    if opt.pattern is not None:
        return isinstance(item, str) and bool(opt.pattern.fullmatch(item))
    return type(item) is int and opt.low <= item <= opt.high  # type: ignore[operator]


def _together(o: BatchOptions) -> None:
    """The rules that tie options to each other (the seed's)."""
    dynamic = o.policy == BatchKind.DYNAMIC
    if dynamic and o.target != Target.ALL:
        raise InvalidInput("target", "a dynamic batch targets all matching devices")
    if o.target == Target.PHASED and o.percent is None:
        raise InvalidInput("percent", "is required for a phased batch (1 to 100)")
    if o.target != Target.PHASED and o.percent is not None:
        raise InvalidInput("percent", "only a phased batch takes a percentage")
    if o.target == Target.SELECTED and not o.device_names:
        raise InvalidInput("device_names", "a batch of selected devices needs one or more --device")
    if o.target != Target.SELECTED and o.device_names:
        raise InvalidInput("device_names", "devices are given only with --target selected")
    if dynamic and o.scheduled_at:
        raise InvalidInput("scheduled_at", "only a static batch can be scheduled")
    if o.stop_at is None and (
        o.stop_min != DEFAULTS["stop_min"]
        or o.stop_on != DEFAULTS["stop_on"]
        or o.stop_action != DEFAULTS["stop_action"]
    ):
        raise InvalidInput("stop_at", "is required with stop_min, stop_on or stop_action")
    if o.stop_at is None and o.rollback_firmware_id is not None:
        raise InvalidInput(
            "rollback_firmware", "requires stop_at: the rollback follows the stop rule"
        )
    _rollout_together(o)


def _rollout_together(o: BatchOptions) -> None:
    """The rules of the ramp, the windows and the phases."""
    if o.ramp_base is None and (
        o.ramp_factor != DEFAULTS["ramp_factor"] or o.ramp_every != DEFAULTS["ramp_every"]
    ):
        raise InvalidInput("ramp_base", "is required with ramp_factor or ramp_every")
    if o.ramp_base is not None and not o.rate_per_minute:
        raise InvalidInput("rate_per_minute", "is required with ramp_base: the ramp rises up to it")
    if o.ramp_base is not None and o.rate_per_minute and o.ramp_base > o.rate_per_minute:
        raise InvalidInput(
            "ramp_base", f"must not exceed rate ({o.rate_per_minute} devices per minute)"
        )
    if (o.window is None) != (o.window_minutes is None):
        raise InvalidInput("window_minutes", "window and window_minutes are given together")
    if o.window is None and o.window_tz != DEFAULTS["window_tz"]:
        raise InvalidInput("window_tz", "is given only with window")
    manual = o.promote == "manual"
    if not o.phases and (o.promote_at is not None or manual):
        raise InvalidInput("phases", "are required with promote_at or promote")
    if o.phases and o.policy == BatchKind.DYNAMIC:
        raise InvalidInput("phases", "need a static batch: a dynamic batch's targets keep growing")
    if o.phases and o.promote_at is None and not manual:
        raise InvalidInput("promote_at", "a phased rollout needs promote_at or promote manual")
    if manual and o.promote_at is not None:
        raise InvalidInput("promote_at", "is not taken with promote manual")


def check_options(options: BatchOptions) -> None:
    """Every option's range and rule, then the rules between them; InvalidInput names the
    first wrong one by its API name. Nothing is read or stored: a typo fails fast."""
    for opt in OPTIONS:
        problem = _problem(opt, getattr(options, opt.name))
        if problem:
            raise InvalidInput(opt.api, problem)
    _together(options)


def options_of(options: BatchOptions) -> dict[str, Any]:
    """The options as a dict keyed by name (a BatchInput's, or a BatchOptions')."""
    return {o.name: getattr(options, o.name) for o in OPTIONS}


# --- naming ---

API_TO_CLI: dict[str, str] = {o.api: o.cli_name for o in OPTIONS if o.api != o.cli_name}
