"""The contract between the starter, the workflows, the activities and the bridge.

Workflow names, ids, signal names and input dataclasses are public: users start and signal
these workflows with the Temporal CLI, so change them only in backward-compatible ways.
Only the standard library, temporalio, ota.domain (the states the fields below are typed with,
so that Temporal decodes them as such) and ota.batch_options (itself pure) may be imported here:
workflows import this module (tests/test_workflow_imports.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from temporalio.common import SearchAttributeKey

from ota.batch_options import BatchOptions
from ota.domain import BatchState, CancelScope, PushOutcome, ReportOutcome, TaskReason, TaskState

TASK_QUEUE = "ota"

# Workflow type names, as `temporal workflow start --type` takes them.
BATCH_WORKFLOW = "BatchWorkflow"
VERIFY_WORKFLOW = "VerifyWorkflow"
DEVICE_WORKFLOW = "DeviceUpgradeWorkflow"

SIGNAL_CANCEL = "cancel"
SIGNAL_REPORT = "report"  # bridge -> device workflow: the device finished, or failed an attempt
SIGNAL_ONLINE = "online"  # bridge or pacer -> device workflow: the device it waits for is online
# bridge -> batch workflow: devices of this paced batch came online and wait for their turn
SIGNAL_DEVICES_ONLINE = "devices_online"
# bridge -> dynamic batch workflow: devices reported one of its source versions; look now (its
# poll, `dynamic_poll_seconds`, stays the safety net)
SIGNAL_DEVICES_ARRIVED = "devices_arrived"
# operator -> batch workflow: push nothing new until `resume` (pushed devices finish)
SIGNAL_PAUSE = "pause"
SIGNAL_RESUME = "resume"
# operator -> batch workflow: open the phase gate the batch waits at (a phased rollout's next phase)
SIGNAL_PROMOTE = "promote"
QUERY_PROGRESS = "progress"

BATCH_ID = SearchAttributeKey.for_keyword("OtaBatchId")
PRODUCT_KEY = SearchAttributeKey.for_keyword("OtaProductKey")
STATE = SearchAttributeKey.for_keyword("OtaState")
SEARCH_ATTRIBUTES = (BATCH_ID, PRODUCT_KEY, STATE)


def batch_workflow_id(batch_id: str) -> str:
    return f"batch-{batch_id}"


def verify_workflow_id(batch_id: str) -> str:
    return f"verify-{batch_id}"


def rollback_batch_id(batch_id: str) -> str:
    """The batch a stopped batch's rollback policy starts: one id per stopped batch, so it is
    created once whatever retries and replays. A batch id is at most 64 characters."""
    rollback = f"{batch_id}-rb"
    if len(rollback) <= 64:
        return rollback
    digest = hashlib.sha256(batch_id.encode()).hexdigest()[:8]
    return f"{batch_id[:52]}-{digest}-rb"


def device_workflow_id(product_key: str, device_name: str) -> str:
    """One id per device: the server then enforces one ongoing update per device. `/` is in
    neither a product key nor a device name, so no two devices share an id (with `-` they did:
    product `a` device `b-c001` and product `a-b` device `c001`)."""
    return f"device/{product_key}/{device_name}"


def legacy_device_workflow_id(product_key: str, device_name: str) -> str:
    """The id device workflows had before `device/{pk}/{dn}`: one started then keeps it until it
    ends, so what signals, cancels or checks a device tries this one when the new id is not found
    (docs/design.md, "Upgrading a running installation")."""
    return f"device-{product_key}-{device_name}"


@dataclass
class BatchInput(BatchOptions):
    """A static or dynamic batch; `temporal workflow start --type BatchWorkflow` takes this JSON:
    the batch's id and firmware, its options (ota/batch_options.py), and the pacer's knobs."""

    batch_id: str
    firmware_id: int
    # Pacing knobs; `ota batch create` copies them from Settings, tests lower them.
    start_burst: int = 50  # device workflows started per workflow task (ENGINE.md: cap bursts)
    continue_as_new_every: int = 200  # starts per run before continuing as new
    poll_seconds: float = 5.0  # how often a batch whose starts are done re-counts its tasks
    # How often a dynamic batch looks for newly matching devices unasked (the bridge's
    # `devices_arrived` makes it look at once): the safety net.
    dynamic_poll_seconds: float = 60.0
    # Filled in by the workflow itself when it continues as new.
    carry: PacerCarry | None = None


@dataclass
class PacerCarry:
    """What one run of the batch pacer hands the next across continue-as-new."""

    prepared: bool = True
    started: int = 0  # device workflows started so far, over all runs
    busy: int = 0
    paced_since: str | None = None  # ISO time the pacing clock started (rate limiting)
    after_task_id: int = 0  # cursor: tasks with a larger id are still to start
    policy_canceled: bool = False
    runs: int = 1
    # What prepare found, so later runs need not ask again.
    product_key: str = ""
    target_version: str = ""
    total: int = 0
    skipped: int = 0
    # Starts (and turns) in the last minute, for the sliding-window rate limit across runs.
    recent: list[StartMark] = field(default_factory=list)
    turns: int = 0  # reconnected devices let push by the pacer, over all runs
    # A `devices_online` no claim has answered yet, carried across continue-as-new.
    turns_pending: bool = False
    # A `devices_arrived` no sync has answered yet (dynamic batches), likewise.
    arrivals_pending: bool = False
    # Paused (by the operator or the stop rule), and why; the stop rule trips once per batch:
    # a resumed batch goes on whatever its failure rate.
    paused: bool = False
    pause_note: str | None = None
    stop_tripped: bool = False
    # Devices in flight (batches with a cap): the last count, plus the pushes let go since.
    in_flight: int = 0
    # Gated phases: the phase pushing now (0-based), and what the unstarted tasks are recorded
    # as waiting for (TaskReason phase or window; None: the batch's pace).
    phase: int = 0
    waiting: str | None = None
    # The ramp: the most devices seen updated, and since when (ISO) and after how many pushes
    # its current rate holds (None: since pacing began).
    ramp_updated: int = 0
    rate_since: str | None = None
    pushed_before_rate: int = 0


@dataclass
class StartMark:
    """`count` pushes let go at `at` (epoch seconds, workflow time): device workflows started,
    or reconnected devices given their turn."""

    at: float
    count: int


@dataclass
class VerifyInput:
    """Validate a firmware on a few devices; `temporal workflow start --type VerifyWorkflow`."""

    batch_id: str
    firmware_id: int
    device_names: list[str]
    timeout_minutes: int | None = None


@dataclass
class DeviceUpgradeInput:
    batch_id: str
    task_id: int
    product_key: str
    device_name: str
    retry_interval_minutes: int | None = None
    max_retries: int = 1
    timeout_minutes: int | None = None
    firmware_id: int | None = None  # saves the push a read of the batch
    # Minutes a pushed device has to report any progress before it is pushed again (a retry)
    # or fails no_response; None: it may stay pushed as long as it is silent (seed).
    pickup_timeout_minutes: int | None = None
    # Carried across continue-as-new of a long wait (offline for weeks, no progress report).
    retries_used: int = 0
    awaiting_report: bool = False
    pushed_at: str | None = None  # ISO workflow time of the push awaited (pickup timeout only)


@dataclass
class DeviceUpgradeResult:
    state: TaskState  # a final one
    reason: str | None = None
    attempts: int = 0


@dataclass
class CancelRequest:
    scope: str = "scheduled"  # scheduled | all
    # Set by the batch: a device workflow ignores a cancel meant for another batch's run.
    batch_id: str | None = None


@dataclass
class DeviceReport:
    """What the bridge tells a device workflow: `updated`, or `failed` with the reason."""

    outcome: ReportOutcome
    reason: str | None = None
    version: str | None = None
    # When set, a device workflow of another batch ignores the report (a late or stray signal).
    batch_id: str | None = None
    # The attempt the task was on when the report came: a failure redelivered after the next
    # push (the bridge lost its connection mid-flush) must not fail the new attempt.
    attempt: int | None = None


@dataclass
class BatchProgress:
    """Counts per task state; the answer of the `progress` query."""

    batch_id: str
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    started: int = 0
    total: int = 0
    skipped: int = 0
    note: str | None = None  # why it is paused or was stopped, or what it waits for
    # What holds its unpushed devices back while in progress: "phase" (a phase gate: the
    # `promote` signal opens it), "window" (outside its maintenance window), or None.
    waiting: str | None = None
    phase: int = 0  # the phase pushing now (0-based; batches with phases)
    rate: int | None = None  # devices a minute now: the batch's rate, or its ramp's so far


# --- between the workflows and their activities (internal, but workflows may only import this) ---


@dataclass
class PrepareResult:
    product_key: str
    module: str
    target_version: str
    total: int  # tasks created
    skipped: int  # targeted devices already on the target version
    state: str  # the batch's state: scheduled | in_progress | ...


@dataclass
class TaskRef:
    task_id: int
    device_name: str


@dataclass
class ClaimRequest:
    """Take the next tasks to start (and mark them started); optionally look for new devices."""

    batch_id: str
    after_task_id: int
    limit: int
    sync_dynamic: bool = False  # dynamic batches: first add devices that match now
    want_counts: bool = False
    busy_task_ids: list[int] = field(default_factory=list)  # mark these failed/busy first
    # Paced batches: first let up to this many reconnected devices push (their `online` signal
    # comes from the claim), then start new tasks with what is left of `limit`.
    turns: int = 0
    # Batches with a stop rule: also the failed tasks by reason (timeouts apart).
    want_failures: bool = False
    # Batches with an in-flight cap: also how many devices are in flight (with the counts).
    want_in_flight: bool = False


@dataclass
class ClaimResult:
    tasks: list[TaskRef] = field(default_factory=list)
    counts: dict[str, int] | None = None
    added: int = 0  # tasks a dynamic sync created
    busy: int = 0  # tasks failed busy by the claim itself (a device under its legacy id)
    turns_given: int = 0  # reconnected devices signalled to push now
    turns_waiting: bool = False  # more reconnected devices wait for their turn
    failures: dict[str, int] | None = None  # failed tasks by reason (want_failures)
    in_flight: int | None = None  # pushed, upgrading or about to push, this claim's included


@dataclass
class FinishBatchRequest:
    batch_id: str
    state: BatchState  # completed | canceled | in_progress (begin pacing, resume) | paused
    note: str | None = None  # why (paused, stopped); in_progress clears it
    # in_progress only: the unstarted tasks wait for this (TaskReason phase or window), the note
    # says until when; None: they are pushed at the batch's pace.
    waiting: TaskReason | None = None


@dataclass
class RollbackRequest:
    """A stopped batch's rollback policy: its failed devices get `firmware_id`."""

    batch_id: str  # the stopped batch
    firmware_id: int  # its rollback_firmware_id


@dataclass
class RollbackResult:
    batch_id: str | None = None  # the rollback batch (rollback_batch_id), None if none started
    devices: int = 0  # failed devices it targets
    problem: str | None = None  # why none started (no failed device, a rule refused it)


@dataclass
class CancelTasksRequest:
    batch_id: str
    scope: CancelScope


@dataclass
class CancelTasksResult:
    canceled: int = 0  # tasks canceled directly (never started, or their workflow was gone)
    signaled: int = 0  # device workflows asked to cancel


@dataclass
class PushRequest:
    task_id: int
    batch_id: str
    product_key: str
    device_name: str
    attempt: int  # 1 for the first push; sets Task.attempts, so a replayed push counts once
    firmware_id: int | None = None


@dataclass
class PushResult:
    outcome: PushOutcome
    state: TaskState
    reason: str | None = None


@dataclass
class TaskCheck:
    state: TaskState
    reason: str | None = None
    first_progress_at: str | None = None  # ISO 8601


@dataclass
class FinishTaskRequest:
    task_id: int
    state: TaskState
    reason: str | None = None


@dataclass
class VerifyPrepared:
    product_key: str
    target_version: str
    tasks: list[TaskRef] = field(default_factory=list)


@dataclass
class VerifyFinishRequest:
    batch_id: str
    firmware_id: int
    verified: bool
    canceled: bool = False  # the verification ends `canceled`, as a canceled batch does
