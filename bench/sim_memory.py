"""What a simulated device costs in memory: the RSS a connected fleet adds, per device.

    python -m bench.sim_memory --devices 2000 [--mqtt-url mqtt://127.0.0.1:1883]
        [--mqtt-protocol 5|3.1.1] [--connect-rate 2000]
    python -m bench.sim_memory --devices 100000 [--leaves N] [--processes P] [--push 10000]

Past one broker's share (ota.broker_tier.LEAF_DEVICES), or with --leaves, the fleet runs on a
broker tier of its own, in several processes: bench/sim_tier.py. Otherwise:

One process, on the simulator's own event loop (ota.aio: uvloop), against an anonymous broker
(clean sessions, so the probe leaves none behind):
RSS once everything the fleet shares exists (imports, HTTP client, TLS context), then once every
device is connected (subscribed, "online" and its version published); the difference over the
devices. Prints one JSON object. Each device is a socket: the broker's and this process's open
files bound how many (`ulimit -n`; the simulator raises its soft limit to the hard one).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx

from bench.sim_tier import measure_tier
from ota import aio
from ota.broker_tier import leaves_for
from ota.device.simulator import Fleet, FleetConfig, processes_for, raise_open_files_limit

CONNECT_TIMEOUT = 120.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def measure(cfg: FleetConfig) -> dict[str, Any]:
    """Connect `cfg.devices` devices, measure, stop them (each says "offline" and leaves)."""
    raise_open_files_limit(cfg.devices)
    async with httpx.AsyncClient() as http:
        fleet = Fleet(cfg, http=http)
        # Clean sessions: on 3.1.1 a persistent one never expires, and the broker is shared.
        fleet.mqtt_options = [replace(o, persistent=False) for o in fleet.mqtt_options]
        gc.collect()
        before = rss_bytes()
        started = time.monotonic()
        run = asyncio.create_task(fleet.run())
        deadline = started + CONNECT_TIMEOUT
        while not (fleet.devices and all(d.is_connected for d in fleet.devices)):
            if run.done() or time.monotonic() > deadline:
                connected = sum(d.is_connected for d in fleet.devices)
                raise RuntimeError(f"only {connected} of {cfg.devices} devices connected")
            await asyncio.sleep(0.1)
        connect_seconds = time.monotonic() - started
        gc.collect()
        after = rss_bytes()
        fleet.stop.set()
        summary = await run
    return {
        "devices": cfg.devices,
        "mqtt_protocol": cfg.mqtt_protocol,
        "kb_per_device": round((after - before) / cfg.devices / 1024, 2),
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "connect_seconds": round(connect_seconds, 1),
        "connected_once": summary["connected_once"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--mqtt-protocol", default="5", choices=["5", "3.1.1"])
    parser.add_argument(
        "--connect-rate",
        type=float,
        help="connects/s for the fleet; default 2000, on a tier 500 (what this machine answers"
        " without CONNACK timeouts at 100,000: docs/bench/2026-12-01-sim-100000.json)",
    )
    parser.add_argument("--leaves", type=int, help="default: as many as the devices need")
    parser.add_argument("--processes", type=int, help="default: as the open-file limit needs")
    parser.add_argument("--push", type=int, default=10_000, help="tier: devices pushed at once")
    args = parser.parse_args()
    leaves = leaves_for(args.devices) if args.leaves is None else args.leaves
    if leaves:
        processes = args.processes or processes_for(args.devices)
        rate = args.connect_rate or 500.0
        report = measure_tier(args.devices, leaves, processes, rate, args.mqtt_protocol, args.push)
        print(json.dumps(aio.run(report)))
        return
    cfg = FleetConfig(
        f"mem{uuid.uuid4().hex[:8]}",
        args.devices,
        "1.0.0",
        mqtt_url=args.mqtt_url,
        mqtt_protocol=args.mqtt_protocol,
        connect_rate=args.connect_rate or 2000.0,
    )
    print(json.dumps(aio.run(measure(cfg))))


if __name__ == "__main__":
    main()
