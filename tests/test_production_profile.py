"""The production profile (bench/production.py, docs/deploy.md) on a small fleet: PostgreSQL, S3
with presigned URLs, two workers, two bridges and two API processes, one batch. Every device is
updated, and each worker and each bridge carried part of it, by its own /metrics and by the
identities Temporal recorded."""

from __future__ import annotations

import pytest

from bench.production import COPIES, run_production

DEVICES = 50


@pytest.mark.slow
async def test_two_of_everything_share_one_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = await run_production(DEVICES, tmp_path)

    assert report["updated"] == DEVICES, report["batch"]
    for kind in ("worker", "bridge"):  # pushes; messages (or device reports)
        for n in range(1, COPIES + 1):
            reading = report["metrics"][f"{kind}-{n}"]
            assert "missing" not in reading, reading["missing"]
            assert reading["value"] > 0, f"{kind}-{n} carried nothing: {reading}"
    assert all(n > 0 for n in report["by_history"]["worker_workflow_tasks"].values())
    assert all(n > 0 for n in report["by_history"]["bridge_signals"].values())
    # The pushes' URLs were S3's: no API process served a download (when it counts them).
    assert report["confirmations"] and False not in report["confirmations"].values()
    assert report["passed"], report["checks"]
