"""The contract between the starter, the workflows, the activities and the bridge.

Workflow names, ids, signal names and input dataclasses are public: users start and signal
these workflows with the Temporal CLI, so change them only in backward-compatible ways.
Only the standard library and temporalio may be imported here (workflows import this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "ota"

SIGNAL_CANCEL = "cancel"
SIGNAL_REPORT = "report"  # bridge -> device workflow: the device finished, or failed an attempt
SIGNAL_ONLINE = "online"  # bridge -> device workflow: the device it waits for came online
QUERY_PROGRESS = "progress"

BATCH_ID = SearchAttributeKey.for_keyword("OtaBatchId")
PRODUCT_KEY = SearchAttributeKey.for_keyword("OtaProductKey")
STATE = SearchAttributeKey.for_keyword("OtaState")
SEARCH_ATTRIBUTES = (BATCH_ID, PRODUCT_KEY, STATE)


def batch_workflow_id(batch_id: str) -> str:
    return f"batch-{batch_id}"


def verify_workflow_id(batch_id: str) -> str:
    return f"verify-{batch_id}"


def device_workflow_id(product_key: str, device_name: str) -> str:
    """One id per device: the server then enforces one ongoing update per device."""
    return f"device-{product_key}-{device_name}"


@dataclass
class BatchInput:
    """A static or dynamic batch; `temporal workflow start --type BatchWorkflow` takes this JSON."""

    batch_id: str
    firmware_id: int
    policy: str = "static"  # static | dynamic
    src_versions: list[str] = field(default_factory=list)
    target: str = "all"  # all | selected | phased
    device_names: list[str] = field(default_factory=list)
    percent: int | None = None
    scheduled_at: str | None = None  # ISO 8601 with a time zone; static only
    rate_per_minute: int | None = None
    retry_interval_minutes: int | None = None  # None: do not retry; 0: retry immediately
    max_retries: int = 1
    timeout_minutes: int | None = None
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


@dataclass
class CancelRequest:
    scope: str = "scheduled"  # scheduled | all


@dataclass
class DeviceReport:
    """What the bridge tells a device workflow: `updated`, or `failed` with the reason."""

    outcome: str  # updated | failed
    reason: str | None = None
    version: str | None = None


@dataclass
class BatchProgress:
    """Counts per task state; the answer of the `progress` query."""

    batch_id: str
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    started: int = 0
    total: int = 0
    skipped: int = 0
