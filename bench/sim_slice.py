"""One simulator process of bench/sim_tier.py, in a fresh interpreter (so its memory is its
own, not pages shared with the process that started it): a FleetConfig arrives pickled on
stdin, the fleet runs until SIGTERM, and its FleetOutcome leaves pickled on stdout."""

from __future__ import annotations

import pickle
import sys

from ota.device.simulator import run_fleet


def main() -> None:
    cfg = pickle.load(sys.stdin.buffer)
    outcome = run_fleet(cfg)
    sys.stdout.buffer.write(pickle.dumps(outcome))


if __name__ == "__main__":
    main()
