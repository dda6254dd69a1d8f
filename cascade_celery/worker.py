"""The consumer bootstep: a worker also consumes the hand-off queue of each of its queues.

A parked task is handed off to ``cascade.handoff.<queue>`` rather than to the back of
``<queue>``, so a backlog of other work in ``<queue>`` can't delay it: the broker
serves a worker's queues in turn, and only workers that consume ``<queue>`` get it.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from kombu.common import ignore_errors

from cascade_celery.install import installation
from cascade_celery.pools.headers import handoff_entity, handoff_queue, is_handoff_queue


class HandoffQueues(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consume ``cascade.handoff.<queue>`` beside every task queue the worker consumes."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        installed = installation(parent.app)
        # Signal receivers can't stop a worker (Celery logs their errors); a step can:
        # a wrong setting raises ConfigurationError here, before any task is consumed.
        _ = installed.config
        # Set in the worker's main process before the pool forks: children inherit it.
        installed.consumes_handoffs = True
        self.consumer: Any = None

    def start(self, c: Any) -> None:
        """Consume the hand-off queues (again after a reconnect: the channel is new).

        A consumer of their own, on the task consumer's channel (so prefetch limits
        count them too) and with the task consumer's message handler. Neither
        ``app.amqp.queues`` nor the task consumer's queues list them: they are the
        app's own queue configuration, which routing, ``inspect active_queues`` and
        the user read.
        """
        queues = [
            handoff_entity(handoff_queue(queue.name))
            for queue in c.task_consumer.queues
            if not is_handoff_queue(queue.name)
        ]
        if not queues:
            return  # (TaskConsumer would read "no queues" as "the app's queues")
        self.consumer = c.app.amqp.TaskConsumer(
            c.task_consumer.channel, queues=queues, on_decode_error=c.on_decode_error
        )
        self.consumer.on_message = c.create_task_handler()
        self.consumer.consume()

    def stop(self, c: Any) -> None:
        """Stop consuming the hand-off queues."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            ignore_errors(c, consumer.cancel)

    def shutdown(self, c: Any) -> None:
        """Stop consuming the hand-off queues (the channel is the task consumer's)."""
        self.stop(c)
