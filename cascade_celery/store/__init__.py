"""ConstraintStore: the active constraint set, shared by every process through Redis.

Changes go to a Redis HASH, bump a version counter and are announced on a pub/sub
channel; each worker process reloads the whole set on an announcement (or when a
periodic poll sees a new version), so a missed message only delays a change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from importlib.resources import files

import redis
from redis.typing import EncodableT, FieldT

from cascade_celery.constraints.model import Constraint
from cascade_celery.errors import CascadeError, InvalidConstraint
from cascade_celery.pools.keys import (
    constraints_applied,
    constraints_channel,
    constraints_hash,
    constraints_signed,
    constraints_version,
)
from cascade_celery.text import text

logger = logging.getLogger(__name__)

Validator = Callable[[Constraint], None]

_CHANGE = files(__name__).joinpath("change_constraint.lua").read_text(encoding="utf-8")


class HistoryLost(CascadeError):
    """A write that continues the set's history found it gone (Redis lost the set)."""


class ConstraintStore:
    """Read and change the constraint set stored under one prefix.

    What it writes was validated by its caller at the edge it came in by (the Python
    API, an MQTT payload); what it reads back is validated with ``validate`` (Redis is
    shared: an entry may be damaged, or of a type this installation lacks).
    """

    def __init__(self, client: redis.Redis, prefix: str, validate: Validator) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = constraints_channel(prefix)
        self._validate = validate
        self._hash = constraints_hash(prefix)
        self._version = constraints_version(prefix)
        self._applied = constraints_applied(prefix)
        self._signed = constraints_signed(prefix)
        self._change_script = client.register_script(_CHANGE)

    def put(self, constraint: Constraint, *, continuing: bool = False) -> bool:
        """Store a validated ``constraint`` (replacing one with the same id), then announce.

        Storing what is already stored changes nothing; storing one whose ``expires_at``
        has passed removes the entry with its id. Return whether anything changed.
        ``continuing``: the caller has written to this set before, so raise ``HistoryLost``
        (and write nothing) if Redis has lost it since.
        """
        if constraint.is_expired(time.time()):
            return self.delete(constraint.id, continuing=continuing)
        return self._change(constraint.id, _encode(constraint), continuing)

    def delete(self, constraint_id: str, *, continuing: bool = False) -> bool:
        """Remove a constraint; return whether it was stored (``continuing`` as for put)."""
        return self._change(constraint_id, "", continuing)

    def restore(self, constraints: Iterable[Constraint]) -> None:
        """Store ``constraints`` again after Redis lost the set: all of them, or none."""
        entries: dict[FieldT, EncodableT] = {c.id: _encode(c) for c in constraints}
        if not entries:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._hash, mapping=entries)
            pipe.incr(self._version)
            _, version = pipe.execute()
        self.client.publish(self.channel, version)

    def _change(self, constraint_id: str, data: str, continuing: bool) -> bool:
        version = int(self._change_script(keys=[self._hash, self._version],
                                          args=[constraint_id, data, int(continuing)]))  # fmt: skip
        if version < 0:
            raise HistoryLost(f"Redis lost the constraint set under {self.prefix!r}")
        if version == 0:
            return False
        self.client.publish(self.channel, version)
        return True

    def delete_expired(self, constraint: Constraint) -> bool:
        """Remove ``constraint`` (which has expired) unless its entry changed meanwhile."""
        data = _encode(constraint)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._hash)
                if _text(pipe.hget(self._hash, constraint.id)) != data:
                    return False
                pipe.multi()
                pipe.hdel(self._hash, constraint.id)
                pipe.incr(self._version)
                _, version = pipe.execute()
            except redis.exceptions.WatchError:
                return False
        self.client.publish(self.channel, version)
        return True

    def last_signed_at(self, constraint_id: str) -> float | None:
        """When the last accepted signed payload of ``constraint_id`` was signed."""
        value = self.client.hget(self._signed, constraint_id)
        return None if value is None else float(value)

    def record_signed_at(self, constraint_id: str, signed_at: float) -> None:
        """Remember ``signed_at`` for ``constraint_id`` (never moves back in time)."""
        current = self.last_signed_at(constraint_id)
        if current is None or signed_at > current:
            self.client.hset(self._signed, constraint_id, repr(signed_at))

    def ids(self) -> set[str]:
        """The ids of every stored constraint."""
        return {text(key) for key in self.client.hkeys(self._hash)}

    def has_history(self) -> bool:
        """Whether the set was ever changed in this Redis (false after losing its data)."""
        return bool(self.client.exists(self._version))

    def version(self) -> int:
        """The current version of the set (0 before any change)."""
        return int(self.client.get(self._version) or 0)

    def load(self) -> tuple[int, list[Constraint]]:
        """Read the whole set at one version; invalid entries are logged and skipped."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self._version)
            pipe.hgetall(self._hash)
            version, entries = pipe.execute()
        constraints = []
        for key, raw in entries.items():
            try:
                constraint = Constraint.from_dict(json.loads(raw))
                self._validate(constraint)
            except (ValueError, InvalidConstraint) as exc:
                logger.error("cascade: skipping stored constraint %r: %s", text(key), exc)
                continue
            constraints.append(constraint)
        return int(version or 0), constraints

    def version_holding(self, constraint_id: str, constraint: Constraint | None) -> int | None:
        """The current version if the stored entry for ``constraint_id`` is ``constraint``.

        ``None`` for ``constraint`` means "absent"; return ``None`` if the store differs.
        """
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(self._hash, constraint_id)
            pipe.get(self._version)
            raw, version = pipe.execute()
        expected = None if constraint is None else _encode(constraint)
        return int(version or 0) if _text(raw) == expected else None

    # -- which version each gating process enforces ---------------------------------------

    def report_applied(self, process: str, version: int, ttl: float) -> None:
        """Record that ``process`` enforces ``version``, for the next ``ttl`` seconds."""
        self.client.hset(self._applied, process, f"{version} {time.time() + ttl:.3f}")

    def forget_process(self, process: str) -> None:
        """Drop a process that stops gating."""
        self.client.hdel(self._applied, process)

    def applied(self) -> dict[str, int]:
        """Each live gating process and the version it enforces (stale reports are dropped)."""
        now = time.time()
        live, stale = {}, []
        for key, raw in self.client.hgetall(self._applied).items():
            process = text(key)
            try:
                version, alive_until = text(raw).split()
                if float(alive_until) >= now:
                    live[process] = int(version)
                    continue
            except ValueError:
                pass
            stale.append(process)
        if stale:
            self.client.hdel(self._applied, *stale)
        return live


def _encode(constraint: Constraint) -> str:
    return json.dumps(constraint.to_dict(), sort_keys=True)


def _text(value: object) -> str | None:
    """A reply as text; None (a missing key) stays None."""
    return None if value is None else text(value)
