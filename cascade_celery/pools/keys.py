"""The Redis key layout: the only place key strings are built.

Per pool ``<name>`` (``<p>`` is the ``cascade_redis_prefix`` setting)::

    <p>:{pool:<name>}:capacity   STRING  units the pool may hand out (absent: unlimited)
    <p>:{pool:<name>}:used       STRING  units held by running leases and reservations
    <p>:{pool:<name>}:holders    ZSET    lease member -> expiry (ms, Redis clock)
    <p>:{pool:<name>}:units      HASH    member -> units
    <p>:{pool:<name>}:waiters    ZSET    parked task id -> arrival (ms; when its worker got it)
    <p>:{pool:<name>}:parked     HASH    parked task id -> message payload
    <p>:{pool:<name>}:stats      HASH    counters and histograms the scripts keep (below)
    <p>:{pool:<name>}:ring       LIST    fair values with waiters, in turn (fair lines)
    <p>:{pool:<name>}:q:<value>  ZSET    task id -> arrival, of one fair value's waiters
    <p>:{pool:<name>}:dropped    HASH    task id -> payload of a waiter dropped from a full
                                         line, until its dropper ended it (SUPERSEDED)

A keyed pool ``"<base> <key>=<value>"`` (constraints/keyed.py) has the same keys under
``<p>:{pool:<base>} <key>=<value>:`` (the base's hash tag: one slot per base), but its
stats are its family's, ``<p>:{pool:<base>} <key>:stats``; and the family's
``<p>:{pool:<base>} <key>:live`` SET lists the ``<key>=<value>`` of its pools that
hold or wait (the scripts keep it: a pool holding nothing with nobody waiting leaves it
and every key it had). The registry below lists the family, not its pools.

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
from collections.abc import Callable, Iterable
from typing import NamedTuple

from cascade_celery.constraints.keyed import split_keyed
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


def _stem(prefix: str, pool: str) -> str:
    base, sep, rest = pool.partition(" ")
    tag = f"{prefix}:{{pool:{_escape(base)}}}"
    return f"{tag} {_escape(rest)}" if sep else tag


@functools.lru_cache(maxsize=4096)
def pool_keys(prefix: str, pool: str) -> PoolKeys:
    """The keys of ``pool``; a keyed pool's stats are its family's."""
    stem = _stem(prefix, pool)
    keys = [f"{stem}:{part}" for part in PoolKeys._fields]
    keyed = split_keyed(pool)
    if keyed is not None:
        keys[-1] = f"{_stem(prefix, keyed.family)}:stats"
    return PoolKeys(*keys)


def stats_of(key: str) -> str:
    """The stats HASH of the pool ``key`` (any one of its keys) belongs to."""
    stem = key.rsplit(":", 1)[0]
    tag, sep, rest = stem.rpartition("} ")
    if sep and "=" in rest:  # a keyed pool: its family's
        stem = f"{tag}}} {rest.partition('=')[0]}"
    return f"{stem}:stats"


def ring_key(prefix: str, pool: str) -> str:
    """The LIST of fair values in turn in ``pool``'s line (pools/lua/includes/pool.lua)."""
    return f"{_stem(prefix, pool)}:ring"


def queue_key(prefix: str, pool: str, value: str) -> str:
    """The ZSET of fair value ``value``'s waiters in ``pool``'s line."""
    return f"{_stem(prefix, pool)}:q:{value}"


def dropped_of(prefix: str, pool: str) -> str:
    """The HASH of ``pool``'s waiters dropped from a full line and not ended yet."""
    return f"{_stem(prefix, pool)}:dropped"


def family_live(prefix: str, family: str) -> str:
    """The SET of ``"<key>=<value>"`` (escaped) of a family's pools that hold or wait."""
    return f"{_stem(prefix, family)}:live"


def live_pools(family: str, members: Iterable[bytes | str]) -> list[str]:
    """The pools named by members of :func:`family_live`."""
    base = family.partition(" ")[0]
    return [f"{base} {_unescape(text(member))}" for member in members]


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
