"""Read the start/end events the test tasks record, and compute what they prove."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass(frozen=True)
class Run:
    """One execution of a task: its id, label, wall-clock interval and process.

    ``view`` is what ``gated.soak`` notes at its start (see ``ViewedTask.gate_view``).
    """

    id: str
    label: object
    start: float
    end: float | None
    pid: int = 0
    view: dict[str, Any] = field(default_factory=dict, compare=False)


def runs(client: redis.Redis, prefix: str) -> list[Run]:
    """Every recorded execution, in start order."""
    # An execution's start and end come from one process: pair them per (id, pid).
    by_run: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for raw in client.lrange(f"{prefix}:events", 0, -1):
        event = json.loads(raw)
        by_run.setdefault((str(event["id"]), int(event.get("pid", 0))), []).append(event)
    result = []
    for (task_id, _), events in by_run.items():
        pending: list[dict[str, Any]] = []
        for event in sorted(events, key=lambda e: (float(e["t"]), e["kind"] == "start")):
            if event["kind"] == "start":
                pending.append(event)
            elif pending:
                result.append(_run(task_id, pending.pop(0), float(event["t"])))
        result.extend(_run(task_id, begun, None) for begun in pending)
    return sorted(result, key=lambda run: run.start)


def _run(task_id: str, begun: dict[str, Any], end: float | None) -> Run:
    view = begun.get("view")
    return Run(task_id, begun["label"], float(begun["t"]), end, int(begun.get("pid", 0)),
               view if isinstance(view, dict) else {})  # fmt: skip


def peak_concurrency(all_runs: list[Run], *, after: float = 0.0) -> int:
    """The most runs in progress at one instant (ends count before starts at a tie)."""
    edges = []
    for run in all_runs:
        end = run.end if run.end is not None else float("inf")
        if end <= after:
            continue
        edges.append((max(run.start, after), 1))
        edges.append((end, -1))
    running = peak = 0
    for _, delta in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += delta
        peak = max(peak, running)
    return peak


#: How much shorter than a rate's period the window counting its starts is. A task stamps
#: its start a moment after cascade admitted it (and re-timed the admission just before
#: the body); on a loaded machine the process can be descheduled in between, which shifts
#: its stamp, not its admission. Loaded runs showed 51 stamps of a 50/s rate within 975
#: ms, and (at load 6) 11 of 10/s within 911 ms: a stamp trailing its re-timed admission
#: by over 89 ms. A rate overrun by a whole window (Celery's own per-worker rate runs 2x
#: over) still shows.
STAMP_SLACK = 0.1


def most_started_within(all_runs: list[Run], seconds: float) -> int:
    """The most runs started in any interval of ``seconds`` (half-open: [t, t + seconds))."""
    starts = sorted(run.start for run in all_runs)
    most = first = 0
    for last, start in enumerate(starts):
        while start - starts[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def starts_report(all_runs: list[Run]) -> str:
    """Start times (s from the first) with labels and processes, for a failure's message."""
    first = min((run.start for run in all_runs), default=0.0)
    return ", ".join(f"{run.label}@{run.start - first:.4f}/{run.pid}" for run in all_runs)
