"""GatedTask: a Celery task class whose runs are gated by the constraints in force.

Declare per task (``@app.task(base=GatedTask, concurrency=5)``) or for a whole app
(``Celery(..., task_cls="cascade_celery:GatedTask")`` or ``Cascade(app, gate_all=True)``).

A worker runs a message through the task's tracer (``task.__trace__``, which Celery
builds per task); GatedTask's tracer gates first (internals.hook_tracer). An admitted
execution then goes through Celery's trace as usual (``task_prerun``, ``before_start``, the body,
``task_postrun``, which releases its slots). A parked one ends there as ``IGNORED``
(the worker acknowledges it) without the trace: no prerun/postrun signals for a run
that did not start, and none of the cost of building the two formatted tracebacks
Celery makes for an ``Ignore`` raised inside the trace (~2 ms a parking).
``before_start`` gates executions that don't come through the tracer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from celery import Task
from celery.app.task import Context
from celery.exceptions import Ignore

from cascade_celery import internals
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT, concurrency_pool
from cascade_celery.constraints.keyed import CODE_KEY, as_key_value, family_name, keyed_pool
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.constraints.rate import parse_rate, rate_pool
from cascade_celery.errors import ConfigurationError, InvalidConstraint
from cascade_celery.install import installation
from cascade_celery.pools.headers import original_route

_RESOURCE_NAME = re.compile(r"[^\s{}]{1,200}")


class GatedTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """A task that starts only when every constraint matching it allows (else it's parked)."""

    #: Cluster-wide limit on how many runs of this task may run at once, declared in
    #: code. A ``concurrency`` constraint on exactly ``task:<name>`` overrides it at
    #: runtime; removing that constraint restores it. None: no limit in code.
    concurrency: ClassVar[int | None] = None

    #: Cluster-wide rate declared in code: ``"10/s"``, or windows that all hold
    #: (``["10/s", "500/h"]``). A ``rate_limit`` constraint on exactly ``task:<name>``
    #: replaces it at runtime. Celery's own ``rate_limit`` stays per worker.
    rate: ClassVar[str | Sequence[str] | None] = None

    #: Units of named pools each run holds, e.g. ``{"gpu": 1}``. A ``concurrency``
    #: constraint on ``resource:<name>`` sets that pool's capacity (none: unlimited).
    resources: ClassVar[Mapping[str, int] | None] = None

    #: A key for the limit and rate declared here: ``key=lambda args, kwargs: ...``
    #: returns a run's key value (any value; not a string: its JSON text), and each key
    #: value gets ``concurrency`` and ``rate`` on its own (constraints/keyed.py). Code,
    #: so it is never sent over MQTT; an exception it raises fails the run.
    key: ClassVar[Callable[[Any, Any], object] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = getattr(cls, "name", None) or cls.__qualname__
        concurrency = cls.__dict__.get("concurrency")
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_LIMIT
        ):
            raise ConfigurationError(
                f"task {name}: concurrency must be an integer from 1 to {MAX_LIMIT} "
                f"(or None), got {concurrency!r}; to hold a task, pause it"
            )
        rate = cls.__dict__.get("rate")
        if rate is not None:
            try:
                parse_rate(rate if isinstance(rate, str) else list(rate))
            except (InvalidConstraint, TypeError) as exc:
                raise ConfigurationError(f"task {name}: rate: {exc}") from None
        key = cls.__dict__.get("key")
        if key is not None:
            if not callable(key):
                raise ConfigurationError(f"task {name}: key must be a function (args, kwargs)")
            if cls.__dict__.get("concurrency") is None and cls.__dict__.get("rate") is None:
                raise ConfigurationError(f"task {name}: key needs a concurrency or a rate")
            cls.key = staticmethod(key)  # called as key(args, kwargs), not as a method
        resources = cls.__dict__.get("resources")
        if resources is not None:
            if not isinstance(resources, Mapping):
                raise ConfigurationError(
                    f"task {name}: resources must be a mapping like {{'gpu': 1}}, got {resources!r}"
                )
            for resource, units in resources.items():
                if not isinstance(resource, str) or not _RESOURCE_NAME.fullmatch(resource):
                    raise ConfigurationError(
                        f"task {name}: resource name {resource!r} must be 1-200 characters "
                        "without whitespace or braces"
                    )
                if isinstance(units, bool) or not isinstance(units, int) or units < 1:
                    raise ConfigurationError(
                        f"task {name}: resources[{resource!r}] must be an integer >= 1, "
                        f"got {units!r}"
                    )

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Gate an execution the tracer did not gate: return to run it, or park it and
        end this execution (Ignore). Then (Celery calls this just before the body) count
        its rate admissions from now."""
        super().before_start(task_id, args, kwargs)
        request = self.request
        if request.called_directly or request.is_eager:
            return
        gated = getattr(request, GATED, None)
        if isinstance(gated, BaseException):
            raise gated  # the tracer's gate failed: Celery handles it here (Reject...)
        runtime = installation(self.app).runtime()
        if gated is None:
            version = runtime.gate(self, request, self.cascade_info(request), args, kwargs)
            if version is None:
                raise Ignore()
            setattr(request, GATED, version)
        runtime.started(task_id)  # the body starts: count its rate admissions from now

    def cascade_requirements(self, args: Any = (), kwargs: Any = None) -> dict[str, int]:
        """The pools a run (of ``args``, ``kwargs``) needs, declared in code: ``pool ->
        units``; with a ``key``, its key value's pools."""
        requirements = {f"resource:{name}": units for name, units in (self.resources or {}).items()}
        declared = [*self._rate_capacities()]
        if self.concurrency is not None:
            declared.append(concurrency_pool(f"task:{self.name}"))
        key = type(self).key  # a staticmethod (__init_subclass__): the function itself
        if key is not None and declared:
            value = as_key_value(key(args, kwargs or {}))
            declared = [keyed_pool(pool, CODE_KEY, value) for pool in declared]
        requirements.update(dict.fromkeys(declared, 1))
        return requirements

    def cascade_defaults(self) -> dict[str, int]:
        """Pool capacities declared in code: ``pool -> capacity`` (with a ``key``: the
        capacity of every pool of the family ``"<pool> code"``)."""
        defaults = self._rate_capacities()
        if self.concurrency is not None:
            defaults[concurrency_pool(f"task:{self.name}")] = self.concurrency
        if self.key is not None:
            return {family_name(pool, CODE_KEY): n for pool, n in defaults.items()}
        return defaults

    def _rate_capacities(self) -> dict[str, int]:
        if self.rate is None:
            return {}
        rate = self.rate if isinstance(self.rate, str) else tuple(self.rate)
        return dict(_rate_capacities(f"task:{self.name}", rate))

    def cascade_info(self, request: Any) -> TaskInfo:
        """What the constraint handlers see of a run of this task (``request``)."""
        return TaskInfo(
            name=self.name,
            queue=queue_of(self.app, *original_route(request)),
            resources=self.cascade_requirements(request.args or (), request.kwargs or {}),
            args=request.args or (),
            kwargs=request.kwargs or {},
            headers=MessageHeaders(request),
        )


@functools.lru_cache(maxsize=1024)
def _rate_capacities(scope: str, rate: str | tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """The pools (and capacities) of a rate declared in code, parsed once."""
    windows = parse_rate(rate if isinstance(rate, str) else list(rate))
    return tuple((rate_pool(scope, window), window.count) for window in windows)


#: Request key set by the gated tracer: the constraint-set version the execution was
#: admitted under, or the exception its gate raised (re-raised in ``before_start``).
GATED = "cascade_gated"


def _gated(task: Any, tracer: Any) -> Any:
    """Wrap Celery's ``tracer`` for ``task``: gate, then trace only what was admitted."""
    app = task.app

    def trace(uuid: str, args: Any, kwargs: Any, request: Any = None) -> Any:
        request = dict(request or {})
        if request.get("is_eager"):
            return tracer(uuid, args, kwargs, request)
        runtime = installation(app).runtime()
        free = runtime.admission.free.known(task.name, request)
        if free is not None:  # needs no pool: no Context, no Redis, nothing to release
            request[GATED] = free
            return tracer(uuid, args, kwargs, request)
        try:
            context = Context(request, args=args, called_directly=False, kwargs=kwargs)
            version = runtime.gate(task, context, task.cascade_info(context), args, kwargs)
        except Exception as exc:
            request[GATED] = exc
        else:
            if version is None:
                return internals.ignored_result()
            request[GATED] = version
        try:
            return tracer(uuid, args, kwargs, request)
        finally:
            # Normally task_postrun has released it; not when the trace ended early.
            runtime.release(uuid)

    return trace


internals.hook_tracer(GatedTask, _gated)  # a worker runs messages through the gate


class MessageHeaders(Mapping[str, Any]):
    """A run's message headers as keys read them: Celery puts a message's custom headers
    among the request's own fields (``request.<name>``), some versions under
    ``request.headers`` too."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def __getitem__(self, name: str) -> Any:
        value = getattr(self._request, name, None)
        if value is None:
            value = (getattr(self._request, "headers", None) or {}).get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(getattr(self._request, "headers", None) or {})

    def __len__(self) -> int:
        return len(getattr(self._request, "headers", None) or {})


def queue_of(app: Any, exchange: str, routing_key: str) -> str | None:
    """The queue a message was routed to, from its exchange and routing key."""
    if not routing_key:
        return None
    if not exchange:
        return routing_key
    for queue in app.amqp.queues.values():
        if (
            queue.exchange is not None
            and queue.exchange.name == exchange
            and (queue.routing_key == routing_key)
        ):
            return str(queue.name)
    return str(routing_key)
