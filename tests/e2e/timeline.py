"""Read the start/end events the test tasks record, and compute what they prove."""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Run:
    """One execution of a task: its id, label and wall-clock interval."""

    id: str
    label: object
    start: float
    end: float | None


def runs(client: redis.Redis, prefix: str) -> list[Run]:
    """Every recorded execution, in start order."""
    by_id: dict[str, list[dict[str, object]]] = {}
    for raw in client.lrange(f"{prefix}:events", 0, -1):
        event = json.loads(raw)
        by_id.setdefault(str(event["id"]), []).append(event)
    result = []
    for task_id, events in by_id.items():
        pending: list[dict[str, object]] = []
        for event in sorted(events, key=lambda e: (float(e["t"]), e["kind"] == "start")):
            if event["kind"] == "start":
                pending.append(event)
            elif pending:
                begun = pending.pop(0)
                result.append(Run(task_id, begun["label"], float(begun["t"]), float(event["t"])))
        result.extend(Run(task_id, e["label"], float(e["t"]), None) for e in pending)
    return sorted(result, key=lambda run: run.start)


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
