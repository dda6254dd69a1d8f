"""``Cascade(app, gate_all=True)``: every task of the app is a GatedTask, its own base kept."""

from __future__ import annotations

import pytest
from celery import Celery, Task

from cascade_celery import Cascade, ConfigurationError, GatedTask


class AuditedTask(Task):  # type: ignore[misc]
    """A custom base class, like a user's or Celery's DjangoTask."""

    def audit(self) -> str:
        return f"audited {self.name}"


def test_every_task_is_gated_library_and_built_in_ones_included() -> None:
    app = Celery("gate-all", set_as_current=False)
    Cascade(app, gate_all=True)

    @app.task(name="shop.charge", shared=False)
    def charge() -> None: ...

    app.finalize()
    assert isinstance(app.tasks["shop.charge"], GatedTask)
    assert isinstance(app.tasks["celery.chord_unlock"], GatedTask)


def test_a_custom_task_cls_is_kept_under_gate_all() -> None:
    # Replacing it would drop the user's code (or DjangoTask's delay_on_commit).
    app = Celery("gate-all", task_cls=AuditedTask, set_as_current=False)
    Cascade(app, gate_all=True)

    @app.task(name="shop.charge", shared=False)
    def charge() -> None: ...

    task = app.tasks["shop.charge"]
    assert isinstance(task, GatedTask)
    assert task.audit() == "audited shop.charge"


def test_gate_all_on_a_finalized_app_is_refused_and_installs_nothing() -> None:
    app = Celery("gate-all", set_as_current=False)
    app.finalize()
    with pytest.raises(ConfigurationError, match="before the app is finalized"):
        Cascade(app, gate_all=True)
    assert not hasattr(app, "_cascade")
    assert not app.steps["consumer"]
    Cascade(app)  # a plain install still works
