"""pytest plugin: run Celery's own integration suite with GatedTask as every task's base.

Loaded by ``scripts/celery_integration.sh`` with ``-p celery_gated_plugin``; it lives
outside Celery's tree and changes nothing in it. ``CASCADE_SUITE_MODE`` picks how
tasks get GatedTask:

- ``task_cls`` (default): ``Celery(..., task_cls="cascade_celery:GatedTask")`` and no
  cascade setting at all (cascade uses the Redis broker);
- ``gate_all``: ``Cascade(app, gate_all=True)`` on every app the suite creates;
- ``off``: plain Celery (the baseline).

``CASCADE_SUITE_LIMIT=<n>`` stores a ``global`` concurrency limit of ``n`` in the
cascade Redis before the worker starts, so every task takes the gated path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from cascade_celery import Cascade, GatedTask
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.redis_client import client_for
from cascade_celery.runtime import Runtime

MODE = os.environ.get("CASCADE_SUITE_MODE", "task_cls")
LIMIT = os.environ.get("CASCADE_SUITE_LIMIT")
#: The worker's app, for the summary at the end.
_SESSION_APPS: list[Celery] = []


class GatedFixtures:
    """Fixtures that override celery.contrib.pytest's (registered after it, so they win)."""

    @pytest.fixture(scope="session")
    def celery_parameters(self) -> dict[str, Any]:
        """The test apps' constructor arguments: GatedTask as the default task base."""
        return {"task_cls": "cascade_celery:GatedTask"} if MODE == "task_cls" else {}

    @pytest.fixture(scope="session", autouse=True)
    def cascade_session_app(self, celery_session_app: Celery) -> Iterator[None]:
        """Install cascade on the worker's app and store the limit before it starts."""
        _SESSION_APPS.append(celery_session_app)
        if MODE == "gate_all":
            Cascade(celery_session_app, gate_all=True)
        if LIMIT is not None:
            # A separate app, as an operator's CLI would be: the suite's apps stay as they are.
            admin = Celery("cascade-admin", broker=celery_session_app.conf.broker_url)
            Cascade(admin).limit("global", int(LIMIT))
        yield
        if LIMIT is not None:
            Cascade.for_app(admin).unlimit("global")

    @pytest.fixture(autouse=True)
    def cascade_function_app(self, celery_app: Celery) -> None:
        """Install cascade on each test's own app (the one the test sends from)."""
        if MODE == "gate_all":
            Cascade(celery_app, gate_all=True)


def pytest_configure(config: pytest.Config) -> None:
    """Register the fixtures late so they override the ones Celery's plugin defines."""
    if MODE not in ("task_cls", "gate_all", "off"):
        raise pytest.UsageError(f"CASCADE_SUITE_MODE must be task_cls, gate_all or off: {MODE!r}")
    if MODE != "off":
        config.pluginmanager.register(GatedFixtures(), "cascade-gated-fixtures")
        _count_in_redis()


def _count_in_redis() -> None:
    """Count gate calls, leases and parks in the worker's processes (they fork from this one).

    Measured in cascade's Redis (``cascade-suite:*`` keys), read back by the summary.
    """
    gate, try_acquire, park = Runtime.gate, ResourceManager.try_acquire, ResourceManager.park

    def counted_gate(self: Runtime, *args: Any, **kwargs: Any) -> int | None:
        self.client.incr("cascade-suite:gated")
        return gate(self, *args, **kwargs)

    def counted_acquire(self: ResourceManager, *args: Any, **kwargs: Any) -> Any:
        result = try_acquire(self, *args, **kwargs)
        if result.lease is not None:
            self.client.incr("cascade-suite:leased")
        elif result.parked:  # acquire-or-park
            self.client.incr("cascade-suite:parked")
        return result

    def counted_park(self: ResourceManager, *args: Any, **kwargs: Any) -> Any:
        parked, handoffs = park(self, *args, **kwargs)
        if parked:
            self.client.incr("cascade-suite:parked")
        return parked, handoffs

    Runtime.gate = counted_gate  # type: ignore[method-assign]
    ResourceManager.try_acquire = counted_acquire  # type: ignore[method-assign]
    ResourceManager.park = counted_park  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Evidence that tasks were gated: how many tasks are GatedTask, and what the gate did."""
    for app in _SESSION_APPS:
        tasks = list(app.tasks.values())
        gated = sum(isinstance(task, GatedTask) for task in tasks)
        client = client_for(Cascade.for_app(app).config)
        counts = {
            name: int(client.get(f"cascade-suite:{name}") or 0)
            for name in ("gated", "leased", "parked")
        }
        terminalreporter.write_line(
            f"cascade: {gated} of {len(tasks)} tasks of the worker's app are GatedTask; "
            f"the worker gated {counts['gated']} runs: {counts['leased']} took a lease, "
            f"{counts['parked']} were parked"
        )


def pytest_report_header() -> str:
    """Say how the tasks are gated, at the top of the run."""
    return f"cascade: mode={MODE} global limit={LIMIT or 'none'} (GatedTask={GatedTask!r})"
