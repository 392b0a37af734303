"""The failure-rate auto-stop's arithmetic (workflows/stopping.py), without a server."""

from __future__ import annotations

from workflows.stopping import failure_share, stop_note


def test_it_trips_at_the_threshold_once_enough_devices_executed():
    counts = {"updated": 31, "failed": 9, "to_be_pushed": 960}
    failures = {"download_failed": 9}
    assert stop_note(counts, failures, 20, 40, "all", "pause") == (
        "paused: 22% failed after 40 devices, threshold 20%"
    )
    assert stop_note(counts, failures, 23, 40, "all", "pause") is None  # 22.5% < 23%
    assert stop_note(counts, failures, 20, 41, "all", "pause") is None  # too few executed
    assert stop_note(counts, failures, 20, 40, "all", "cancel").startswith("canceled: 22%")


def test_which_failures_count():
    counts = {"updated": 5, "failed": 5}
    failures = {"timeout": 2, "no_response": 1, "flash_failed": 2}
    assert failure_share(counts, failures, "all") == (5, 10)
    assert failure_share(counts, failures, "timeout") == (3, 10)
    assert failure_share(counts, failures, "failed") == (2, 10)
    assert stop_note(counts, failures, 30, 1, "timeout", "pause") == (
        "paused: 30% timed out after 10 devices, threshold 30%"
    )


def test_busy_devices_never_ran_the_firmware():
    """A device busy in another batch says nothing of this firmware: not executed, not failed."""
    counts = {"updated": 2, "failed": 8}
    assert failure_share(counts, {"busy": 8}, "all") == (0, 2)
    assert stop_note(counts, {"busy": 8}, 1, 1, "all", "pause") is None


def test_nothing_executed_never_trips():
    assert stop_note({"to_be_pushed": 10}, {}, 1, 1, "all", "pause") is None
