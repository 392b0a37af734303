"""Schemathesis against a real `ota api`: every check, stateful phase included, fixed seed.

No 5xx, every 4xx a problem detail with a documented status, a 405 that lists the path's
methods, the schema's rules the server's own (nothing it states is refused, nothing it refuses is
allowed by it). The few rules OpenAPI cannot state (fields that depend on each other, a file
part's position) are the accepted failures in api_fuzz_baseline.json; any other fails this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.stack import OtaProcesses

HERE = Path(__file__).parent
BASELINE = HERE / "api_fuzz_baseline.json"
SEED, EXAMPLES = 17, 15


def schemathesis(processes: OtaProcesses, *args: str) -> subprocess.CompletedProcess[str]:
    base = f"http://127.0.0.1:{processes.env['OTA_HTTP_PORT']}"
    argv = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{base}/openapi.json",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--header", f"Authorization: Bearer {processes.env['OTA_API_TOKEN']}",
        "--seed", str(SEED),
        "--max-examples", str(EXAMPLES),
        "--workers", "2",
        "--generation-database", "none",
        "--no-color",
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


@pytest.mark.slow
def test_schemathesis_finds_nothing_beyond_the_baseline(ota_processes: OtaProcesses) -> None:
    ota_processes.start("api")
    started = time.monotonic()
    # OTA_FUZZ_BASELINE_UPDATE=1 records this run's failures as accepted: review the diff.
    update = ["--baseline-update"] if os.environ.get("OTA_FUZZ_BASELINE_UPDATE") else []
    run = schemathesis(ota_processes, "--baseline", str(BASELINE), *update)
    took = time.monotonic() - started
    summary = run.stdout[run.stdout.find("SUMMARY") :]
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
    assert "Server error" not in summary, summary
    assert "26 selected" in run.stdout, run.stdout[:2000]  # every operation was tested
    assert took < 240, f"the fuzz run took {took:.0f}s"
    assert "Traceback" not in ota_processes.log("api"), ota_processes.log("api")[-4000:]
