"""The consumer bootstep: a worker also consumes the hand-off queue of each of its queues.

A parked task is handed off to ``cascade.handoff.<queue>`` rather than to the back of
``<queue>``, so a backlog of other work in ``<queue>`` can't delay it: the broker
serves a worker's queues in turn, and only workers that consume ``<queue>`` get it.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from cascade_celery.pools.parking import handoff_queue, is_handoff_queue

_FLAG = "_cascade_consumes_handoffs"


def consumes_handoffs(app: Any) -> bool:
    """Whether this process belongs to a worker whose consumer serves hand-off queues.

    False when cascade was installed only after the worker started (the step was too
    late): hand-offs then go to the task's own queue.
    """
    return bool(getattr(app, _FLAG, False))


class HandoffQueues(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consume ``cascade.handoff.<queue>`` beside every task queue the worker consumes."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        # Built in the worker's main process before the pool forks: children inherit it.
        setattr(parent.app, _FLAG, True)

    def start(self, c: Any) -> None:
        """Add the hand-off queues (again after a reconnect; adding is idempotent)."""
        for queue in list(c.task_consumer.queues):
            if not is_handoff_queue(queue.name):
                name = handoff_queue(queue.name)
                c.add_task_queue(name, exchange=name, exchange_type="direct", routing_key=name)
