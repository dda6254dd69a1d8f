"""Whether hand-offs can be pushed by the Lua scripts: cascade's Redis is the broker's server.

Then a parked task's payload is its hand-off's kombu envelope (pools/envelope.py), and the
script that hands it a slot pushes it onto the broker's list itself, in the same step:
no publish and no confirm from the process that freed the slot. Every process that
hands off this way reports the broker's DB under ``<prefix>:handoff:direct`` (with a
time to live, renewed by its sweeps); the scripts push only while that key names the
payload's DB, so a fleet that moved its broker elsewhere gets its parked tasks
published through kombu again. A process whose broker is elsewhere clears the key.

On a Redis Cluster there is no direct hand-off: a script may touch only its own slot's
keys (``<prefix>:handoff:direct`` and the broker's list are elsewhere) and only DB 0,
so hand-offs are published through kombu.
"""

from __future__ import annotations

import redis
from celery import Celery
from redis.cluster import RedisCluster

from cascade_celery import internals
from cascade_celery.pools.envelope import DirectRoute
from cascade_celery.pools.keys import handoff_direct


def broker_db_on(app: Celery, client: redis.Redis) -> int | None:
    """The broker's DB if the broker is a Redis server and ``client``'s server, else None
    (always None when ``client`` is a cluster's).

    Raises what the broker or Redis raise when either can't be asked.
    """
    if isinstance(client, RedisCluster):
        return None
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        if producer.connection.transport.driver_type != "redis" or not (
            internals.supports_direct(channel)
        ):
            return None
        broker = internals.broker_client(channel)
        if broker.info("server")["run_id"] != client.info("server")["run_id"]:
            return None
        return own_db(broker)


def own_db(client: redis.Redis) -> int:
    """The DB ``client`` uses."""
    return int(client.connection_pool.connection_kwargs.get("db", 0))


def report(client: redis.Redis, prefix: str, route: DirectRoute | None, ttl: float) -> None:
    """Tell the scripts this process hands off directly into ``route``'s broker DB; or,
    with no route (its broker is elsewhere), that direct hand-offs must stop."""
    if route is None:
        client.delete(handoff_direct(prefix))
    else:
        client.set(handoff_direct(prefix), route.broker_db, px=max(1, round(ttl * 1000)))
