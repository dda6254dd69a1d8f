"""PNG plots of a benchmark run (needs matplotlib: ``pip install -e ".[bench]"``).

- utilization: tasks running against the limit, and tasks parked, over the first cascade
  run (running from the tasks' own start/end stamps; parked sampled from Redis every 10 ms);
- rate: for each variant, the tasks started in the trailing window of P seconds (from the
  tasks' start stamps) against the rate's N, and cascade's parked tasks.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any


def plot_all(results: dict[str, Any], json_path: Path) -> list[str]:
    """Write the plots the results allow next to ``json_path``; lines saying what was done."""
    wanted = [name for name in ("utilization", "rate") if "timeline_run_0" in results.get(name, {})]
    if not wanted:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return ["plots skipped: matplotlib is not installed (pip install -e '.[bench]')"]
    lines = []
    for name in wanted:
        path = json_path.with_name(f"{json_path.stem}-{name}.png")
        (utilization if name == "utilization" else rate)(results[name]["timeline_run_0"], path)
        lines.append(f"plot written to {path}")
    return lines


def _steps(edges: list[tuple[float, int]]) -> tuple[list[float], list[int]]:
    """A step function from (time, +1/-1) edges."""
    xs, ys, level = [0.0], [0], 0
    for t, delta in sorted(edges):
        level += delta
        xs.append(t)
        ys.append(level)
    return xs, ys


def utilization(timeline: dict[str, Any], path: Path) -> None:
    """Running vs the limit, and parked, over the run."""
    import matplotlib.pyplot as plt

    edges = [(s, 1) for s, _ in timeline["runs"]] + [(e, -1) for _, e in timeline["runs"]]
    xs, running = _steps(edges)
    pool = timeline["pool"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5), height_ratios=[1, 1])
    top.step(xs, running, where="post", color="tab:blue", label="running (task stamps)")
    top.axhline(timeline["limit"], color="tab:red", linestyle="--", label="limit")
    top.set_ylabel("tasks running")
    top.set_ylim(0, timeline["limit"] + 1.5)
    top.legend(loc="upper right")
    top.set_title(
        f"cascade, limit {timeline['limit']}, {len(timeline['runs'])} tasks published at t=0"
        " (2 workers x 4 processes)"
    )
    bottom.plot([p[0] for p in pool], [p[1] for p in pool], color="tab:orange",
                label="parked (Redis, sampled every 10 ms)")  # fmt: skip
    bottom.set_ylabel("tasks parked")
    bottom.set_xlabel("seconds after the first publish")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trailing(
    starts: list[float], period: float, step: float = 0.01
) -> tuple[list[float], list[int]]:
    """Starts in the trailing window (t - period, t], sampled every ``step`` seconds."""
    end = starts[-1] + period
    xs, ys = [], []
    t = 0.0
    while t <= end:
        xs.append(t)
        ys.append(bisect.bisect_right(starts, t) - bisect.bisect_right(starts, t - period))
        t += step
    return xs, ys


def rate(timeline: dict[str, Any], path: Path) -> None:
    """Per variant: starts in the trailing window vs N; cascade's parked tasks."""
    import matplotlib.pyplot as plt

    names = list(timeline)
    # One time axis for all, as long as the runs that kept near the rate: a run far longer
    # (Celery's rate_limit here) is cut, and says so.
    ends = sorted(timeline[name]["starts"][-1] + timeline[name]["windows"][-1][1] for name in names)
    right = min(ends[-1], 2 * ends[len(ends) // 2]) + 0.5
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(9, 1.9 * len(names) + 0.6))
    for ax, name in zip(axes, names, strict=True):
        data = timeline[name]
        windows = data["windows"]
        colors = ["tab:blue", "tab:green"]
        top = 5
        for (count, period), color in zip(windows, colors, strict=False):
            xs, ys = _trailing(data["starts"], period)
            ax.plot(xs, ys, color=color, label=f"started in the last {period:g} s")
            ax.axhline(count, color=color, linestyle="--", linewidth=1, label=f"rate: {count}")
            top = max(top, max(ys))
        if data["parked"]:
            parked = ax.twinx()
            ps = [p[1] for p in data["parked"]]
            parked.plot([p[0] for p in data["parked"]], ps, color="tab:orange", linewidth=1,
                        alpha=0.7, label="parked")  # fmt: skip
            parked.set_ylim(0, max(max(ps) * 1.15, 5))
            parked.set_ylabel("parked (Redis)", color="tab:orange")
            parked.tick_params(axis="y", colors="tab:orange")
        ax.set_title(name, fontsize=9, loc="left")
        last = data["starts"][-1]
        if last > right:
            ax.text(0.98, 0.25, f"(cut: the last start was at {last:.1f} s)", ha="right",
                    fontsize=8, transform=ax.transAxes)  # fmt: skip
        ax.set_ylim(0, max(top, max(c for c, _ in windows)) * 1.3)
        ax.legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1].set_xlim(-0.3, right)
    axes[-1].set_xlabel("seconds after the first start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
