"""Schemathesis against a real `ota api`: every check, stateful phase included, fixed seed.

No 5xx, every 4xx a problem detail with a documented status, a 405 that lists the path's
methods, the schema's rules the server's own (nothing it states is refused, nothing it refuses is
allowed by it). The few rules OpenAPI cannot state (fields that depend on each other, devices
that must exist) are ACCEPTED in api_fuzz_hooks.py, each with its reason; any other failure,
and any error, fails this test.

Deterministic: one worker (with two, which operation creates product "0" first decided what
later requests saw) and no schemathesis cache (it replayed earlier runs' failures first; it was
committed, too), so the same seed finds the same failures every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import OtaProcesses

HERE = Path(__file__).parent
SEED, EXAMPLES = 17, 15


def schemathesis(
    processes: OtaProcesses, report: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    base = f"http://127.0.0.1:{processes.env['OTA_HTTP_PORT']}"
    argv = [
        str(Path(sys.executable).with_name("st")),
        "--config-file", str(HERE / "api_fuzz.toml"),
        "run",
        f"{base}/openapi.json",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--header", f"Authorization: Bearer {processes.env['OTA_API_TOKEN']}",
        "--seed", str(SEED),
        "--max-examples", str(EXAMPLES),
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
        "--report", "ndjson",
        "--report-ndjson-path", str(report),
        *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api_fuzz_hooks",
        "PYTHONPATH": str(HERE.parent),
    }
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=600, cwd=HERE.parent
    )


def failed_checks(report: Path) -> set[tuple[str, str, str]]:
    """(phase, operation, check) of every failure the run kept, read from its event log."""
    found = set()
    for line in report.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event is None:
            continue
        recorder = event["recorder"]
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                if check["status"] == "failure":
                    found.add((event["phase"], recorder["label"], check["name"]))
    return found


def seed(processes: OtaProcesses) -> None:
    """What the generator's first values name: product "0", device "0000", firmware 1. Without
    them nearly every request about a product is a 404 before its body is looked at, and a
    body the server wrongly accepts is never seen (the lax booleans were found only so)."""
    base = f"http://127.0.0.1:{processes.env['OTA_HTTP_PORT']}/api/v1"
    auth = {"Authorization": f"Bearer {processes.env['OTA_API_TOKEN']}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        for method, path, kwargs in [
            ("POST", "/products", {"json": {"product_key": "0", "name": "0"}}),
            ("POST", "/products/0/devices", {"json": {"name": "0000", "version": "0"}}),
            (
                "POST",
                "/firmware",
                {
                    "data": {"product_key": "0", "name": "0000", "version": "1"},
                    "files": {"file": ("0.bin", b"firmware")},
                },
            ),
        ]:
            r = http.request(method, path, **kwargs)
            assert r.status_code == 201, r.text


@pytest.mark.slow
def test_schemathesis_finds_nothing_beyond_the_accepted(
    ota_processes: OtaProcesses, tmp_path: Path
) -> None:
    ota_processes.start("api")
    seed(ota_processes)
    report = tmp_path / "schemathesis.ndjson"
    started = time.monotonic()
    run = schemathesis(ota_processes, report)
    took = time.monotonic() - started
    output = run.stdout[-12000:] + run.stderr[-2000:]
    found = failed_checks(report)
    assert not found, "\n".join([*map(str, sorted(found)), output])
    assert run.returncode == 0, output  # errors and failing warnings too
    assert "32 selected" in run.stdout, run.stdout[:2000]  # every operation was tested
    assert "Stateful" in run.stdout and "Scenarios:" in run.stdout, output  # it ran
    assert took < 150, f"the fuzz run took {took:.0f}s"
    assert "Traceback" not in ota_processes.log("api"), ota_processes.log("api")[-4000:]
