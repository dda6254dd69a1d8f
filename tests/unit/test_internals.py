"""The private Celery and kombu internals cascade uses are all there (fails loudly after an
upgrade that removes or reshapes one; cascade_celery/internals.py lists them)."""

from __future__ import annotations

from celery import Celery, states

from cascade_celery import GatedTask, internals


def test_every_internal_cascade_uses_exists_in_the_installed_celery_and_kombu() -> None:
    assert internals.missing() == []


def test_celerys_tracer_assignment_goes_through_the_gate() -> None:
    app = Celery("internals", broker="memory://", set_as_current=False)

    @app.task(base=GatedTask, shared=False)
    def work() -> None: ...

    def tracer(*_: object) -> str:
        return "traced"

    work.__trace__ = tracer  # what Celery's worker does (celery/app/trace.py)
    assert work.__trace__ is not tracer  # wrapped: gate first
    assert work.__trace__("id", (), {}, {"is_eager": True}) == "traced"  # eager: not gated
    work.__trace__ = None
    assert work.__trace__ is None


def test_a_parked_execution_returns_what_celerys_trace_returns_for_ignore() -> None:
    result = internals.ignored_result()
    assert result.info.state == states.IGNORED
    assert result is internals.ignored_result()  # built once
