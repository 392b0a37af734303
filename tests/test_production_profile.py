"""The production profile (bench/production.py, docs/deploy.md) on a small fleet: PostgreSQL, S3
with presigned URLs, two workers, two bridges and two API processes, one batch. Every device is
updated, and each worker and each bridge carried part of it, by its own /metrics and by the
identities Temporal recorded."""

from __future__ import annotations

import asyncio
import signal

import pytest

from bench.production import COPIES, run_production
from bench.scrape import read_metric

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


async def test_a_metric_is_read_summed_by_label_or_said_missing() -> None:
    """The reading the profile's checks rest on, against a real /metrics endpoint: a counter
    with or without `_total`, summed over the labels asked for; a metric or a server missing is
    said so, never read as zero."""
    from ota.devstack import free_port
    from ota.metrics import PUSHES
    from ota.ops.http import serving_ops

    before = _pushed()
    PUSHES.labels(product="pkA", outcome="pushed").inc(2)
    PUSHES.labels(product="pkB", outcome="pushed").inc(3)
    PUSHES.labels(product="pkA", outcome="offline").inc(7)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    async with serving_ops("127.0.0.1", port, []):
        # The process's own handlers stay (ota/shutdown.py stops it, the ops server with it).
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
        pushed = await asyncio.to_thread(read_metric, url, ["ota_pushes"], {"outcome": "pushed"})
        every = await asyncio.to_thread(read_metric, url, ["ota_pushes_total"])
        fallback = await asyncio.to_thread(read_metric, url, ["ota_nothing_total", "ota_pushes"])
        absent = await asyncio.to_thread(read_metric, url, ["ota_nothing_total"])
    assert pushed.value == before + 5
    assert every.value is not None and every.value >= pushed.value + 7
    assert fallback.metric == "ota_pushes" and fallback.value == every.value
    assert absent.value is None and absent.missing and "ota_nothing_total not at" in absent.missing
    gone = await asyncio.to_thread(read_metric, url, ["ota_pushes_total"])
    assert gone.value is None and gone.missing and "nothing serves" in gone.missing


def _pushed() -> float:
    """Every product's pushed count so far: other tests in this process pushed too."""
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "ota_pushes"
        for sample in family.samples
        if sample.name == "ota_pushes_total" and sample.labels.get("outcome") == "pushed"
    )
