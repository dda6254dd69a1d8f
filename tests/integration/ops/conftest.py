"""Fixtures and helpers of the ops tests: the CLI app (Redis mode) and a real exporter."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.waiting import free_port, port_open, wait_for
from tests.integration.cli.conftest import ROOT, app, env

__all__ = ["app", "env", "exporter", "scrape"]

#: Samples of one scrape: (metric name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def exporter(app_module: str, env: dict[str, str], *args: str, log: Path) -> Iterator[int]:
    """Run ``celery -A APP cascade exporter`` on a free port until the block ends; yield it.

    It must stop cleanly on SIGTERM (exit status 0).
    """
    port = free_port()
    command = [sys.executable, "-m", "celery", "-A", app_module, "cascade", "exporter",
               "--port", str(port), *args]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=output)
    try:
        wait_for(lambda: port_open(port) or process.poll() is not None, timeout=30)
        assert process.poll() is None, log.read_text()
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()


def scrape(port: int) -> Samples:
    """GET /metrics and parse it as Prometheus does."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def pool_sample(samples: Samples, metric: str, pool: str) -> float | None:
    """The sample of ``metric`` for ``pool``, None if there is none."""
    return samples.get((metric, (("pool", pool),)))


def kinds(samples: Samples, metric: str, pool: str) -> dict[str, float]:
    """The samples of a counter with a ``kind`` label, for ``pool``, by kind."""
    return {
        dict(labels)["kind"]: value
        for (name, labels), value in samples.items()
        if name == metric and dict(labels)["pool"] == pool
    }


def buckets(samples: Samples, metric: str, pool: str) -> list[tuple[float, float]]:
    """A histogram's cumulative (le, count) buckets for ``pool``, by le."""
    return sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == f"{metric}_bucket" and dict(labels)["pool"] == pool
    )


__all__ += ["ROOT", "buckets", "kinds", "pool_sample"]
