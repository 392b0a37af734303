"""The fault harness (bench/faults.py) on a modest fleet: every component killed during a batch,
one at a time and then all together, and the invariants hold afterwards. A failure prints its
seed: `python -m bench --faults --seed N --devices 30 --rate 120` replays it with its logs."""

from __future__ import annotations

import pytest

from bench.faults import FaultConfig, run_seed

SMALL = FaultConfig(
    devices=30,
    rate_per_minute=120,
    timeout_minutes=1,
    install_seconds=1.0,
    outage=(1.0, 4.0),
    s3_outage_max=10.0,
    settle_seconds=20.0,
)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
async def test_every_component_killed_and_no_device_in_a_wrong_state(seed: int) -> None:
    result = await run_seed(seed, SMALL)
    print(result.line())
    assert result.violations == [], (
        f"seed {seed}: {len(result.violations)} violations (logs in {result.workdir}):\n"
        + "\n".join(result.violations[:30])
    )
    assert result.states == {"updated": SMALL.devices}
