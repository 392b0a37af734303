"""The fault harness (bench/faults.py) on a modest fleet: every component killed during a batch,
one at a time and then all together, and the invariants hold afterwards. A failure prints its
seed: `python -m bench --faults --quick --seed N` replays it and keeps its logs."""

from __future__ import annotations

import pytest

from bench.faults import QUICK, run_seed


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
async def test_every_component_killed_and_no_device_in_a_wrong_state(seed: int) -> None:
    result = await run_seed(seed, QUICK)
    print(result.report())
    assert result.violations == [], result.report()
    assert result.states == {"updated": QUICK.devices}
