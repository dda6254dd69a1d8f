"""``python -m benchmarks``: run the benchmarks, print a table, write JSON.

Every figure is measured on this machine in this run; ratios compare variants measured side
by side (interleaved), and repeated runs give a median with its spread (min..max).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks import keyed, keyed_scripts, plot, rate, scenarios

NAMES = ("overhead", "utilization", "control", "scale", "rate",
         "keyed_fairness", "keyed_handoff", "keyed_memory")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the chosen benchmarks, report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", default=",".join(NAMES),
                        help=f"comma-separated subset of {', '.join(NAMES)}")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="repetitions per measurement (3)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/latest.json"),
                        help="where to write the results")  # fmt: skip
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    runs = 1 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")

    results: dict[str, Any] = {"meta": _meta(runs, args.quick)}
    started = time.monotonic()
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name == "overhead":
            results[name] = scenarios.overhead(runs, n=300 if args.quick else 2000)
        elif name == "utilization":
            results[name] = scenarios.utilization(runs, n=60 if args.quick else 200)
        elif name == "control":
            trials = 5 if args.quick else 20
            results[name] = {"tcp_nodelay": scenarios.control_latency(trials, nagle=False),
                             "nagle": scenarios.control_latency(trials, nagle=True)}  # fmt: skip
        elif name == "rate":
            results[name] = rate.rate(runs, n=60, n_two=80) if args.quick else rate.rate(runs)
        elif name == "keyed_fairness":
            results[name] = (keyed.fairness(runs, heavy=200, light=5)
                             if args.quick else keyed.fairness(runs))  # fmt: skip
        elif name == "keyed_handoff":
            results[name] = (keyed_scripts.handoff(runs, (10, 1000), waiters=2000, batch=50)
                             if args.quick else keyed_scripts.handoff(runs))  # fmt: skip
        elif name == "keyed_memory":
            results[name] = (keyed_scripts.memory(tenants=5000, chunk=2500)
                             if args.quick else keyed_scripts.memory())  # fmt: skip
        else:
            results[name] = (scenarios.scale(runs, depth=1000, pools=100, batch=50)
                             if args.quick else scenarios.scale(runs))  # fmt: skip
        results["meta"]["seconds"] = time.monotonic() - started
        _write(args.json, results)  # after each one: a later failure keeps what was measured
    print(render(results))
    print(f"\nwritten to {args.json}")
    for line in plot.plot_all(results, args.json):
        print(line)
    return 0


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def _meta(runs: int, quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {_cpus()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "versions": {pkg: version(pkg) for pkg in ("celery", "kombu", "redis", "paho-mqtt")},
        "runs": runs,
        "quick": quick,
    }


def _cpus() -> int:
    return os.cpu_count() or 0


def render(results: dict[str, Any]) -> str:
    """The results as an aligned two-column table."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and {"median", "min", "max"} <= set(value):
            rows.append(
                (prefix, f"{value['median']:.3f}  ({value['min']:.3f}..{value['max']:.3f})")
            )
        elif isinstance(value, dict):
            for key, inner in value.items():
                if key.startswith("timeline"):  # raw data for the plots
                    continue
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.3f}"))
        else:
            rows.append((prefix, str(value)))

    walk("", {k: v for k, v in results.items() if k != "meta"})
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "median (min..max) of the runs where repeated\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
