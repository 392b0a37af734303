"""python -m bench [--devices N] [--sizes 1000,10000] [--quick] [--out FILE]
python -m bench --faults [--seed N] [--runs K] [--devices N] [--rate R]  (bench/faults.py)
python -m bench --profile production [--devices N] [--out FILE]  (bench/production.py)"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from bench.run import PARTS, new_workdir, run_size

QUICK_DEVICES = 200
PRODUCTION_DEVICES = 1000
RATE = 1000  # the seed's top push rate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--devices", type=int, help="default 2000 (--faults: 300)")
    parser.add_argument(
        "--sizes", help="several fleet sizes, e.g. 1000,10000 (overrides --devices)"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK_DEVICES} devices, < 3 min (--faults: tests/test_faults.py's small run)",
    )  # fmt: skip
    parser.add_argument(
        "--rate",
        type=int,
        help=f"the throttled batch's rate, default {RATE}; 0: skip "
        "(--faults: the batch's rate, default 200)",
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS),
        help="what to measure, default all: ratio (fan-out, our unthrottled batch, fan-out), "
        "rate (the --rate batch), rules (batches with a stop rule and with phases)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-devices", type=int,
        help="the fan-outs' size, default the fleet's (a 100,000-device fan-out takes an hour)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--mqtt-url", help="use this broker instead of starting a Mosquitto of the bench's own"
    )
    parser.add_argument(
        "--profile", nargs="?", const="py-spy", choices=["py-spy", "production"],
        help="alone (or py-spy): py-spy the worker, bridge, api and simulator during the "
        "unthrottled batch; production: docs/deploy.md's topology (PostgreSQL, S3 with presigned "
        f"URLs, 2 workers, 2 bridges, 2 APIs) and one batch, default {PRODUCTION_DEVICES} devices",
    )  # fmt: skip
    parser.add_argument(
        "--faults", action="store_true",
        help="the fault harness: kill every component during a batch, then check invariants",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="--faults: replay this seed (the first one)")
    parser.add_argument("--runs", type=int, default=1, help="--faults: seeds to run")
    parser.add_argument("--keep", action="store_true", help="--faults: keep passing runs' logs too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.faults:
        raise SystemExit(_faults(args))
    if args.profile == "production":
        raise SystemExit(_production(args))

    sizes = [QUICK_DEVICES] if args.quick else [args.devices or 2000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts: one or more of {', '.join(PARTS)}, comma-separated")
    runs = [
        asyncio.run(
            run_size(
                n,
                args.mqtt_url,
                _rate(args.rate),
                new_workdir(),
                args.profile == "py-spy",
                parts,
                args.baseline_devices,
            )
        )
        for n in sizes
    ]
    report = summarize(runs)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"\nwritten to {args.out}")


def _rate(rate: int | None) -> int | None:
    """--rate: unset means the seed's top rate, 0 means no throttled batch."""
    return RATE if rate is None else rate or None


def _faults(args: argparse.Namespace) -> int:
    """Run the fault harness over --runs seeds (from --seed on, else random); 1 if any failed."""
    import random
    from dataclasses import replace

    from bench.faults import QUICK, FaultConfig, run_seeds

    first = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    cfg = QUICK if args.quick else FaultConfig()
    cfg = replace(
        cfg, devices=args.devices or cfg.devices, rate_per_minute=args.rate or cfg.rate_per_minute
    )
    results = run_seeds([first + i for i in range(args.runs)], cfg, keep=args.keep)
    return 0 if all(r.passed for r in results) else 1


def _production(args: argparse.Namespace) -> int:
    """Run the production profile, print what it found, write it; 1 if a check failed."""
    from bench.production import print_production, run_production

    devices = QUICK_DEVICES if args.quick else args.devices or PRODUCTION_DEVICES
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per progress read otherwise
    report = asyncio.run(run_production(devices, new_workdir()))
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_production(report)
    print(f"\nwritten to {args.out}")
    return 0 if report["passed"] else 1


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures come from the largest fleet; every size's are kept under `runs`.
    A run without the ratio part (--parts) has no ratio figures; without the rate or rules
    part, their figures read 0, as the rate's always did with --rate 0."""
    last = runs[-1]
    rate = last.get("rate", {})
    stop = last.get("stop_rule", {})
    phased = last.get("phases", {})
    return {
        "devices": last["devices"],
        "parts": last.get("parts"),
        "broker_auth": last.get("broker_auth"),
        "register_seconds": last.get("register_seconds"),
        **_ratio_summary(runs),
        "rate_1000_devices_per_min": round(rate.get("updated_per_min", 0.0), 1),
        "rate_1000_pushes_per_min": round(rate.get("pacing", {}).get("pushes_per_min", 0.0), 1),
        "rate_1000_pacing_error": round(rate.get("pacing", {}).get("error", 0.0), 4),
        "rate_1000_max_pushes_in_any_minute": rate.get("pacing", {}).get("max_in_any_minute"),
        "rate_1000_pacer_events_per_device": rate.get("pacer_events_per_device"),
        "stop_rule_devices_per_s": round(stop.get("devices_per_s", 0.0), 2),
        "stop_rule_pacer_events_per_device": stop.get("pacer_events_per_device"),
        "stop_rule_db_ops_per_device": round(stop.get("db_ops_per_device", 0.0), 1),
        "phases_devices_per_s": round(phased.get("devices_per_s", 0.0), 2),
        "phases_pacer_events_per_device": phased.get("pacer_events_per_device"),
        "phases_db_ops_per_device": round(phased.get("db_ops_per_device", 0.0), 1),
        "peak_rss_mb": last["peak_rss_mb"],
        "rss_mb_after": last.get("rss_mb_after"),
        "pss_mb_fleet_up": last.get("pss_mb_fleet_up", {}),
        "cpu_seconds": last.get("cpu_seconds", {}),
        # With metrics on (worker, bridge and API serving /metrics): what they cost a device.
        "instrumentation": last.get("instrumentation"),
        "runs": runs,
    }


def _ratio_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The unthrottled batch against the engine's fan-out, when the run measured them."""
    measured = [r for r in runs if "unthrottled" in r]
    if not measured:
        return {}
    last = measured[-1]
    un, baseline = last["unthrottled"], last["baseline"]
    return {
        "baseline_devices": last["baselines"][0]["devices"],
        "baseline_devices_per_s": round(baseline["devices_per_s"], 2),
        "baseline_before_after_devices_per_s": baseline["each_devices_per_s"],
        "devices_per_s": round(un["devices_per_s"], 2),
        "ratio": round(un["devices_per_s"] / baseline["devices_per_s"], 3),
        "events_per_device": un["events_per_device"],
        "signals_per_device": un["signals_per_device"],
        "workflow_tasks_per_device": un["workflow_tasks_per_device"],
        "db_ops_per_device": round(un["db_ops_per_device"], 1),
        "pacer_events_per_device": un["pacer_events_per_device"],
        "baseline_db_ops_per_device": round(baseline["db_ops_per_device"], 1),
        "push_to_updated_p50_s": round(un["p50_s"], 3),
        "push_to_updated_p99_s": round(un["p99_s"], 3),
        "max_history_events": max(
            max(max(r["unthrottled"]["batch_run_events"]) for r in measured),
            max(r["unthrottled"]["max_device_history_events"] for r in measured),
        ),
        # CPU per device during the unthrottled batch and during the (first) baseline.
        "cpu_ms_per_device": _per_device_ms(un["cpu_seconds"], last["devices"]),
        "baseline_cpu_ms_per_device": _per_device_ms(
            last["baselines"][0]["cpu_seconds"], last["baselines"][0]["devices"]
        ),
        "profile": un.get("profile"),
    }


def _per_device_ms(cpu_seconds: dict[str, float], devices: int) -> dict[str, float]:
    return {name: round(s * 1000 / devices, 1) for name, s in cpu_seconds.items() if s}


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("devices", "devices"),
        ("broker authentication", "broker_auth"),
        ("registration with broker users (s)", "register_seconds"),
        ("baseline fan-out, devices/s", "baseline_devices_per_s"),
        ("  before and after ours", "baseline_before_after_devices_per_s"),
        ("ota batch, devices/s", "devices_per_s"),
        ("ratio to baseline", "ratio"),
        ("--rate 1000: updated per minute", "rate_1000_devices_per_min"),
        ("--rate 1000: pushes per minute", "rate_1000_pushes_per_min"),
        ("--rate 1000: pacing error", "rate_1000_pacing_error"),
        ("--rate 1000: most pushes in any minute", "rate_1000_max_pushes_in_any_minute"),
        ("--rate 1000: pacer events per device", "rate_1000_pacer_events_per_device"),
        ("history events per device", "events_per_device"),
        ("signals per device", "signals_per_device"),
        ("workflow tasks per device", "workflow_tasks_per_device"),
        ("server DB operations per device", "db_ops_per_device"),
        ("  baseline's, for comparison", "baseline_db_ops_per_device"),
        ("pacer events per device", "pacer_events_per_device"),
        ("with --stop-at 50: devices/s", "stop_rule_devices_per_s"),
        ("  pacer events per device", "stop_rule_pacer_events_per_device"),
        ("  server DB operations per device", "stop_rule_db_ops_per_device"),
        ("with phases 10/50/100 too: devices/s", "phases_devices_per_s"),
        ("  pacer events per device", "phases_pacer_events_per_device"),
        ("  server DB operations per device", "phases_db_ops_per_device"),
        ("push to updated p50 (s)", "push_to_updated_p50_s"),
        ("push to updated p99 (s)", "push_to_updated_p99_s"),
        ("max events in any run's history", "max_history_events"),
    ]
    for label, key in rows:
        print(f"{label:42} {report.get(key)}")
    for name, mb in report["peak_rss_mb"].items():
        print(f"{'peak RSS ' + name + ' (MB)':42} {mb}")
    for name, mb in report["pss_mb_fleet_up"].items():
        print(f"{'PSS at fleet up ' + name + ' (MB)':42} {mb}")
    for name, seconds in report["cpu_seconds"].items():
        print(f"{'CPU seconds ' + name:42} {seconds}")
    for key in ("cpu_ms_per_device", "baseline_cpu_ms_per_device"):
        print(f"{key:42} {report.get(key)}")
    if cost := report.get("instrumentation"):
        print(f"{'metrics: counter bumps per device':42} {cost['counter_bumps_per_device']}")
        ms = cost["bumps_ms_per_device"] + cost["scrapes_ms_per_device"]
        share = cost["share_of_cpu_per_device"]
        print(f"{'metrics: CPU ms per device (share)':42} {ms:.3f} ({share:.2%})")
    for name, prof in (report.get("profile") or {}).items():
        print(f"\nprofile of {name}: CPU seconds by thread {prof['thread_cpu_seconds']}")
        for function, share in prof.get("functions", {}).items():
            print(f"  {share:6.1%}  {function}")
    if len(report["runs"]) > 1:
        print("\nby fleet size: devices, baseline/s, ota/s, ratio, rss worker/bridge MB")
        for r in (r for r in report["runs"] if "unthrottled" in r):
            b, u = r["baseline"]["devices_per_s"], r["unthrottled"]["devices_per_s"]
            rss = r["peak_rss_mb"]
            print(f"  {r['devices']:>7} {b:8.1f} {u:8.1f} {u / b:6.2f} "
                  f"{rss.get('worker')}/{rss.get('bridge')}")  # fmt: skip


if __name__ == "__main__":
    main()
