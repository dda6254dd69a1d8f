"""The Redis key layout: the only place key strings are built.

Per pool ``<name>`` (``<p>`` is the ``cascade_redis_prefix`` setting)::

    <p>:{pool:<name>}:capacity   STRING  units the pool may hand out (absent: unlimited)
    <p>:{pool:<name>}:used       STRING  units held by running leases and reservations
    <p>:{pool:<name>}:holders    ZSET    lease member -> expiry (ms, Redis clock)
    <p>:{pool:<name>}:units      HASH    member -> units
    <p>:{pool:<name>}:waiters    ZSET    parked task id -> arrival (ms; when its worker got it)
    <p>:{pool:<name>}:parked     HASH    parked task id -> message payload
    <p>:{pool:<name>}:stats      HASH    counters and histograms the scripts keep (below)

Per app::

    <p>:pools                    SET     every pool name ever used (for sweeps and status)
    <p>:pools:contended          pub/sub channel: a pool's line got its first waiter
                                         (message: the pool's name, escaped as in its keys)
    <p>:pools:due                pub/sub channel: a rate pool's next due time changed
                                         (message: "<due ms> <name escaped as in its keys>")
    <p>:defaults                 HASH    pool -> capacity declared in code (task options)
    <p>:handoff:direct           STRING  the broker's DB the scripts push hand-offs into,
                                         while processes report it (pools/direct.py)
    <p>:{constraints}            HASH    constraint id -> constraint JSON (the active set)
    <p>:{constraints}:version    STRING  bumped on every change to the set
    <p>:constraints:changed      pub/sub channel announcing a new version
    <p>:{constraints}:applied    HASH    worker process -> "<version> <alive-until unix time>"
    <p>:{constraints}:signed     HASH    constraint id -> signed_at of its last accepted payload

The stats hash (written by lua/includes/stats.lua, read by the exporter) holds counters
since the hash was made: ``parked``, ``requeued``, ``handoffs:direct``,
``handoffs:published``, ``admitted:acquire``, ``admitted:reservation``, ``released``,
``reclaimed:lease``, ``reclaimed:reservation``, ``lost_leases``; and two histograms,
``wait`` (park to hand-off) and ``handoff`` (hand-off to the task taking its
reservation), each as ``<name>:<bound ms>`` / ``<name>:inf`` bucket counts (not
cumulative) and ``<name>:sum`` (ms). Unlike the other keys it expires: every script
that writes it sets its TTL to an hour, so a pool left alone leaves no stats behind
an hour later (its counters start again from zero, which Prometheus reads as a reset)
and counters never keep a dead pool's keys alive.

One pool's keys share the hash tag ``{pool:<name>}``, so every single-pool script runs
on one Redis Cluster slot; the constraint set's keys share ``{constraints}`` (its
MULTI/WATCH transactions touch two of them). On a cluster, a call whose pools lie in
several slots is made one script per slot (pools/cross_slot.py); the other per-app
keys are each read or written alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import NamedTuple

from cascade_celery.text import text

POOL_KEY_COUNT = 7


class PoolKeys(NamedTuple):
    """The keys of one pool, in the order every Lua script expects them."""

    capacity: str
    used: str
    holders: str
    units: str
    waiters: str
    parked: str
    stats: str


_ESCAPES = {"%": "%25", "{": "%7B", "}": "%7D"}
_UNESCAPES = {escaped: char for char, escaped in _ESCAPES.items()}


def _escape(name: str) -> str:
    # Braces would end the hash tag early; '%' is escaped so the mapping is reversible.
    return re.sub("[%{}]", lambda match: _ESCAPES[match.group()], name)


def _unescape(escaped: str) -> str:
    return re.sub("%25|%7B|%7D", lambda match: _UNESCAPES[match.group()], escaped)


@functools.lru_cache(maxsize=4096)
def pool_keys(prefix: str, pool: str) -> PoolKeys:
    """The keys of ``pool``."""
    base = f"{prefix}:{{pool:{_escape(pool)}}}"
    return PoolKeys(*(f"{base}:{part}" for part in PoolKeys._fields))


def stats_of(key: str) -> str:
    """The stats HASH of the pool ``key`` (any one of its keys) belongs to."""
    return f"{key.rsplit(':', 1)[0]}:stats"


def contended_pool(message: bytes | str) -> str:
    """The pool named by a message on :func:`contended_channel`."""
    return _unescape(text(message))


def due_of(message: bytes | str) -> tuple[str, int]:
    """(pool, due ms on Redis's clock) from a message on :func:`due_channel`."""
    due, _, escaped = text(message).partition(" ")
    return _unescape(escaped), int(due)


def _app_key(suffix: str, doc: str) -> Callable[[str], str]:
    """A function building the key ``<prefix>:<suffix>`` (the layout above)."""

    def key(prefix: str) -> str:
        return f"{prefix}:{suffix}"

    key.__doc__ = doc
    return key


pool_registry = _app_key("pools", "The SET of every pool name used under ``prefix``.")
contended_channel = _app_key(
    "pools:contended",
    "The pub/sub channel on which a pool announces its first waiter (the Lua scripts).",
)
due_channel = _app_key(
    "pools:due", "The pub/sub channel on which a rate pool announces its next due time (Lua)."
)
handoff_direct = _app_key(
    "handoff:direct", "The broker DB the Lua scripts push direct hand-offs into (built in Lua too)."
)
pool_defaults = _app_key(
    "defaults", "The HASH of capacities declared in code, so every process sweeps with them."
)
constraints_hash = _app_key("{constraints}", "The HASH holding the active constraints as JSON.")
constraints_version = _app_key(
    "{constraints}:version", "The counter bumped on every change of the constraint set."
)
constraints_channel = _app_key(
    "constraints:changed", "The pub/sub channel on which a new constraints version is announced."
)
constraints_applied = _app_key(
    "{constraints}:applied",
    "The HASH in which every gating process reports the version it enforces.",
)
constraints_signed = _app_key(
    "{constraints}:signed",
    "The HASH of when each constraint's last accepted signed payload was signed.",
)
