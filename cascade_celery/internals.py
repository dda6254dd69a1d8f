"""Every use of Celery's and kombu's private internals, in one place.

- ``Task.__trace__``: the tracer a worker runs a task's messages with (built by
  ``celery.app.trace.build_tracer`` and assigned by the prefork pool and the consumer).
  GatedTask wraps it to gate before Celery's trace (task.py).
- ``celery.app.trace.trace_ok_t``: what a tracer returns; a parked execution returns
  the one Celery's trace returns for ``Ignore``.
- ``Request.request_dict`` in the worker's main process: the dict the pool hands each
  execution (``task_received`` may add to it); cascade notes when the message arrived.
- kombu's Redis ``Channel``: ``prepare_message``, ``_inplace_augment_message``,
  ``_get_message_priority``, ``_q_for_pri``, ``global_keyprefix`` build the envelope and
  list key a publish would push (direct hand-offs); ``_create_client`` gives the broker's
  client, and is replaced per channel so one client serves every publish.

:func:`missing` names what the installed Celery and kombu lack; a test fails loudly on
it after an upgrade (tests/unit/test_internals.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionInfo  # type: ignore[import-untyped]
from celery import Task, states
from celery.app import trace
from celery.exceptions import Ignore

#: The kombu Redis channel's methods a direct envelope is built with.
CHANNEL_METHODS = ("prepare_message", "_inplace_augment_message", "_get_message_priority",
                   "_q_for_pri", "_create_client")  # fmt: skip
_TRACE_FIELDS = ("retval", "info", "runtime", "retstr")
_IGNORED: list[Any] = []

Tracer = Callable[..., Any]


def hook_tracer(cls: type[Task], wrap: Callable[[Task, Tracer], Tracer]) -> None:
    """Make ``cls``'s ``__trace__`` (the tracer Celery assigns) ``wrap(task, tracer)``."""

    def get(task: Task) -> Any:
        return task.__dict__.get("_cascade_tracer")

    def set_(task: Task, tracer: Tracer | None) -> None:
        task.__dict__["_cascade_tracer"] = None if tracer is None else wrap(task, tracer)

    cls.__trace__ = property(get, set_, doc="Celery's tracer, gated first.")


def ignored_result() -> Any:
    """What Celery's trace returns for an execution that raised Ignore (built once)."""
    if not _IGNORED:
        try:
            raise Ignore()
        except Ignore as exc:
            info = trace.TraceInfo(states.IGNORED, exc)
            _IGNORED.append(trace.trace_ok_t(ExceptionInfo(internal=True), info, None, None))
    return _IGNORED[0]


#: The request key holding when the worker's consumer received the message (Unix time).
RECEIVED_AT = "cascade_received_at"


def note_received(request: Any, at: float) -> None:
    """In the worker's main process (``task_received``): tell the execution of ``request``
    (a worker Request) when its message arrived, for its place in a line."""
    request.request_dict[RECEIVED_AT] = at


def received_at(request: Any) -> float | None:
    """When the worker received the message of an execution (its Context), if noted."""
    at = getattr(request, RECEIVED_AT, None)
    return at if isinstance(at, float) else None


def supports_direct(channel: Any) -> bool:
    """Whether ``channel`` has every method a direct envelope is built with."""
    return all(hasattr(channel, name) for name in CHANNEL_METHODS)


def broker_client(channel: Any) -> Any:
    """The redis-py client of a kombu Redis channel."""
    return channel._create_client()


def build_envelope(channel: Any, queue: str, body: bytes, priority: Any,
                   content: tuple[str, str], headers: dict[str, Any],
                   properties: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The envelope a publish of ``body`` to ``queue`` through the default exchange would
    push: basic_publish's own steps (encode the body, give the delivery its tag, route)."""
    content_type, content_encoding = content
    envelope: dict[str, Any] = channel.prepare_message(
        body, priority, content_type, content_encoding, headers, properties
    )
    channel._inplace_augment_message(envelope, "", queue)
    return envelope


def list_key(channel: Any, envelope: dict[str, Any], queue: str) -> str:
    """The broker list an envelope for ``queue`` goes to (its priority step's)."""
    step = channel._get_message_priority(envelope, reverse=False)
    return str(getattr(channel, "global_keyprefix", "") + channel._q_for_pri(queue, step))


def reuse_redis_client(channel: Any) -> None:
    """Let a kombu Redis channel reuse one client instead of building one per command.

    kombu's Redis transport makes a new ``redis.Redis`` for every publish and ack
    (``Channel.conn_or_acquire``), which costs more than the LPUSH itself with redis-py 8
    (~0.2 ms). The client it builds shares the channel's connection pool and is
    thread-safe, so one can serve every call. Other transports are left as they are.
    """
    create = getattr(channel, "_create_client", None)
    if create is None or getattr(channel, "_cascade_reuses_client", False):
        return
    client = create()

    def create_client(asynchronous: bool = False) -> Any:
        return create(asynchronous=True) if asynchronous else client

    channel._create_client = create_client
    channel._cascade_reuses_client = True


def missing() -> list[str]:
    """The internals above that the installed Celery and kombu lack (empty: all there)."""
    from kombu.transport.redis import Channel

    gone = [f"kombu Channel.{name}" for name in CHANNEL_METHODS if not hasattr(Channel, name)]
    if not hasattr(Channel, "global_keyprefix"):
        gone.append("kombu Channel.global_keyprefix")
    if getattr(trace, "trace_ok_t", None) is None or trace.trace_ok_t._fields != _TRACE_FIELDS:
        gone.append(f"celery.app.trace.trace_ok_t{_TRACE_FIELDS}")
    if not hasattr(trace, "TraceInfo"):
        gone.append("celery.app.trace.TraceInfo")
    if "__trace__" not in vars(Task) or "task.__trace__" not in inspect.getsource(trace):
        gone.append("celery Task.__trace__ (the tracer the worker runs)")
    from celery.worker.request import Request

    if not isinstance(getattr(Request, "request_dict", None), property):
        gone.append("celery Request.request_dict (what the pool hands an execution)")
    return gone
