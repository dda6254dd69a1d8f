"""A parking is kept only once a replica holds it, so a failover never loses it.

After a script parked a task, :meth:`ParkingGuard.check` WAITs for a replica
(``redis_client.ReplicaWait``). When none acknowledges in time, the parked payload is
dropped again while the task still waits (its place in line stays, keyed by its id:
the copy sent back to the broker parks there again, ``park_in`` keeping one entry per
task id; ``dispatch`` drops an entry without payload) and ``NotReplicated`` sends the
task back to the broker as when Redis is down. A task handed off meanwhile is left
alone (no error: that copy runs, so none runs twice).

Left: a copy sent back (WAIT or the undo failed: the master died) whose parking did
reach the promoted replica. The copy parks in its place again (one entry); only if the
parked one is handed off and runs before the copy arrives does the task run twice.
"""

from __future__ import annotations

import itertools
import threading
import uuid

import redis

from cascade_celery.constraints.keyed import split_keyed
from cascade_celery.pools.keys import pool_keys
from cascade_celery.redis_client import NotReplicated, ReplicaWait

#: KEYS: waiters, parked, marker; ARGV: task id, marker field, its value. 1: payload
#: dropped; 0: it no longer waits (handed off); -1: this server never saw the marker
#: (a failover since): the parking is not known to be here.
_UNPARK = """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[3] then return -1 end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class ParkingGuard:
    """Checks that parkings reached a replica; undoes those that did not."""

    def __init__(
        self, client: redis.Redis, prefix: str, replicas: int | None, timeout: float
    ) -> None:
        self.prefix = prefix
        self.replication = ReplicaWait(client, replicas, timeout)
        self._unpark = client.register_script(_UNPARK)
        self._name = uuid.uuid4().hex[:12]
        self._count = itertools.count()

    def replicated(self, pool: str) -> bool:
        """Whether a replica holds every write made so far (True: none needed)."""
        return self.replication.wait(*self._marker(pool))

    def _marker(self, pool: str) -> tuple[str, str, str]:
        """(key in the pool's hash slot, field of this process and thread, new value);
        a keyed pool's is its family's (one key per family, not per key value)."""
        keyed = split_keyed(pool)
        slot_pool = pool if keyed is None else keyed.family
        marker = pool_keys(self.prefix, slot_pool).waiters.removesuffix("waiters") + "replicated"
        return marker, f"{self._name}:{threading.get_ident()}", str(next(self._count))

    def check(self, task_id: str, pool: str) -> None:
        """Return once a replica holds ``task_id``'s parking in ``pool``; else undo it and
        raise NotReplicated (unless it was handed off meanwhile).

        The marker (in the pool's hash slot, one field per process and thread) tells
        whether the undo runs on the server that parked: if not, the task is sent back
        too (it may still be parked there: its copy then parks in its place again).
        """
        marker, field, value = self._marker(pool)
        if self.replication.wait(marker, field, value):
            return
        keys = pool_keys(self.prefix, pool)
        undone = self._unpark(
            keys=[keys.waiters, keys.parked, marker], args=[task_id, field, value]
        )
        if int(undone) != 0:
            raise NotReplicated(f"no replica acknowledged the parking of {task_id} in {pool}")
