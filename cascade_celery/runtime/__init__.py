"""The per-process runtime, in rooms: each module has one job, imports run one way.

``process`` wires them (built after fork); ``admission`` gates an execution; ``leases``
keeps the leases of running and ended tasks; ``handoffs`` publishes and confirms
hand-offs; ``sync`` keeps the constraint set equal to Redis's and sweeps pools;
``contention`` remembers contended pools; ``clock`` reads Redis's clock; ``deferral``
says what becomes of an execution that does not start; ``probe`` is the tests' seam.
"""

from cascade_celery.errors import REDIS_DOWN
from cascade_celery.runtime.deferral import DEFERRED, RETRY_HEADER
from cascade_celery.runtime.process import Runtime

__all__ = ["DEFERRED", "REDIS_DOWN", "RETRY_HEADER", "Runtime"]
