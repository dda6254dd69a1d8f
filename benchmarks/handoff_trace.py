"""``python -m benchmarks.handoff_trace``: where the milliseconds of a hand-off go.

Runs the utilization workload (200 x 50 ms tasks, limit 3, two prefork workers x 4) on
workers of ``benchmarks.traced_app`` and prints, for the hand-offs made once the arrival
burst was parked, the median and p90 of each step: the releasing process's release script
and publish, the broker and the receiving worker's consumer, its pool handing the task to
a process, and that process's gate. Twice, on one Redis server for the broker and cascade
(DB 0 and 1): hand-offs pushed by the release script (direct), then published by the
releasing process through kombu (``cascade_direct_handoff`` off).
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

from benchmarks import scenarios
from benchmarks.cluster import cluster
from benchmarks.stats import percentile
from cascade_celery import Cascade

STEPS = (
    ("release script", "release_called", "release_done"),
    ("publish (kombu; 0 when direct)", "release_done", "published"),
    ("broker -> worker consumer", "published", "worker_received"),
    ("consumer -> pool process", "worker_received", "gate_called"),
    ("gate (acquire the reservation)", "gate_called", "gate_done"),
    ("release called -> gate done", "release_called", "gate_done"),
)


def _stamps(directory: Path, since: float) -> dict[str, dict[str, list[float]]]:
    stamps: dict[str, dict[str, list[float]]] = collections.defaultdict(dict)
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            step, task_id, at = line.split()
            if float(at) > since:
                stamps[task_id].setdefault(step, []).append(float(at))
    for marks in stamps.values():  # each process wrote its own file
        for times in marks.values():
            times.sort()
    return stamps


def main() -> None:
    """Run the traced workload in each mode and print the steps."""
    with (
        tempfile.TemporaryDirectory(prefix="cascade-trace-") as trace,
        cluster(shared=True) as (
            c,
            app,
        ),
    ):
        Cascade.for_app(app).limit("task:bench.gated_timed", 3)
        for mode, direct in (("direct", "1"), ("through kombu", "0")):
            c.stop_workers()
            c.start_workers(2, concurrency=4, app_module="benchmarks.traced_app",
                            env={"BENCH_TRACE_DIR": trace, "BENCH_DIRECT": direct})  # fmt: skip
            scenarios._timed_run(c, app, "bench.gated_timed", (), 24, 0.05)  # warm up
            since = time.time()
            events = scenarios._timed_run(c, app, "bench.gated_timed", (), 200, 0.05)
            settled = max(e["published"] for e in events) + scenarios._SETTLED_AFTER
            _print(mode, _durations(_stamps(Path(trace), since), settled))


def _durations(stamps: dict[str, dict[str, list[float]]], settled: float) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = collections.defaultdict(list)
    for marks in stamps.values():
        if "release_called" not in marks or marks["release_called"][0] < settled:
            continue
        released = marks["release_called"][0]
        first = {step: min((t for t in times if t >= released), default=None)
                 for step, times in marks.items()}  # fmt: skip
        for label, start, end in STEPS:
            if first.get(start) is not None and first.get(end) is not None:
                durations[label].append(1000 * (first[end] - first[start]))  # type: ignore[operator]
    return durations


def _print(mode: str, durations: dict[str, list[float]]) -> None:
    width = max(len(label) for label, _, _ in STEPS)
    print(f"\nhand-offs {mode}")
    print(f"{'step'.ljust(width)}  p50 ms  p90 ms  hand-offs")
    for label, _, _ in STEPS:
        values = durations[label]
        print(f"{label.ljust(width)}  {percentile(values, 50):6.2f}  {percentile(values, 90):6.2f}"
              f"  {len(values)}")  # fmt: skip


if __name__ == "__main__":
    main()
