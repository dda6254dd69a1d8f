"""On a Redis Cluster: pool calls whose pools lie in several hash slots, one script per slot.

A Lua script may touch the keys of one slot only, and each pool's keys share one (its
hash tag), so a call on one pool, or on pools that happen to share a slot, runs as on
one server. :class:`SlotScripts` splits the others through :class:`Scripts`' own
methods, and maps each part's hand-offs and dues back to the caller's pool indices.

**All-or-none acquire across slots.** The task's pools are grouped by slot and the
groups acquired one after another, in a fixed order: pools a release frees fully
first, then rate windows, shortest first (by slot within each). A group that blocks
parks the task there, in the same script, as on one server (its reservations in that
group go back); the groups acquired before it are released again (their room goes to
their waiters) and the reservations it holds in later groups are given back.

- *No over-admission*: a pool admits the task only in its own script, atomically
  against its capacity; units held elsewhere meanwhile change no pool's check.
- *No deadlock*: no call waits while holding anything. A blocked task holds nothing
  once the call returns and waits in one line, as on one server.
- *What it costs*: while the task holds group 1 and tries group 2, group 1's units are
  taken (a newcomer may park behind them; the rollback hands it off). A rate window
  keeps an admission that is released (it counts a start), so a rollback leaves one
  admission counted in each rate window acquired before the block: the rate is never
  exceeded, but can run below N per period while tasks block after it (the shortest
  windows go first: the cheapest admission is the one lost). A process killed between
  groups leaves what it acquired held until its lease expires, as any killed process.

Releases, renewals, re-stamps and confirmations run per slot and add up (each part is
idempotent, so a caller's retry after a part failed is safe). Hand-offs that a
multi-slot call made return only once each slot's master's replicas hold them (WAIT,
as ``ResourceManager`` does for one slot); those no replica acknowledged are left out
(their reservations expire and put them back in line).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from cascade_celery.constraints.rate import window_of_pool
from cascade_celery.pools.keys import PoolKeys, contended_pool
from cascade_celery.pools.scripts import AcquireStatus, Handoff, Outcome, Scripts
from cascade_celery.redis_client import ReplicaWait
from cascade_celery.redis_cluster import is_cluster, node_client, slot_of

logger = logging.getLogger(__name__)

_NAME = re.compile(r"\{pool:([^{}]*)\}")


def scripts_for(client: redis.Redis, replication: ReplicaWait) -> Scripts:
    """The scripts for ``client``: per slot on a cluster, else as they are."""
    return SlotScripts(client, replication) if is_cluster(client) else Scripts(client)


@dataclass
class _Part:
    """One script call's hand-offs, in the caller's indices, and a pool it touched."""

    keys: PoolKeys
    handoffs: list[Handoff]


@dataclass
class _Merged:
    """The outcomes of the parts of one call, in the caller's pool indices."""

    parts: list[_Part] = field(default_factory=list)
    dues: list[tuple[int, int]] = field(default_factory=list)

    def add(self, outcome: Outcome, index: Sequence[int], keys: Sequence[PoolKeys]) -> Outcome:
        """Take ``outcome`` of a call on ``keys`` (the caller's pools ``index``)."""
        handoffs = [replace(h, pool_index=index[h.pool_index]) for h in outcome.handoffs]
        self.parts.append(_Part(keys[0], handoffs))
        self.dues += [(index[i], due) for i, due in outcome.dues]
        return outcome


class SlotScripts(Scripts):
    """:class:`Scripts` on a Redis Cluster: calls spanning slots are made slot by slot."""

    def __init__(self, client: redis.Redis, replication: ReplicaWait) -> None:
        super().__init__(client)
        self.client = client
        self.replication = replication
        self._name = uuid.uuid4().hex[:12]
        self._count = itertools.count()

    # -- acquire ------------------------------------------------------------------------

    def acquire(
        self,
        pools: Sequence[PoolKeys],
        requests: Sequence[tuple[int | None, int]],
        *,
        task_id: str,
        member: str,
        lease_seconds: float,
        max_handoffs: int,
        release_reservations_in: Sequence[PoolKeys] = (),
        park_with: bytes | None = None,
        release_leases: Sequence[tuple[str, Sequence[PoolKeys]]] = (),
        arrival_ms: float | None = None,
    ) -> Outcome:
        """As :meth:`Scripts.acquire`, all-or-none across slots (the module docstring)."""
        common: dict[str, Any] = {
            "task_id": task_id, "member": member, "lease_seconds": lease_seconds,
            "max_handoffs": max_handoffs,
        }  # fmt: skip
        stale = list(release_reservations_in)
        released = [(m, list(keys)) for m, keys in release_leases]
        everything = [*pools, *stale, *(k for _, keys in released for k in keys)]
        if len(self._slots(everything)) <= 1:
            return super().acquire(pools, requests, **common, release_reservations_in=stale,
                                   park_with=park_with, release_leases=released,
                                   arrival_ms=arrival_ms)  # fmt: skip
        merged = _Merged()
        home = self._slots(pools)
        home_slot = next(iter(home)) if len(home) == 1 else None
        # Leases ended and reservations no longer needed, outside the slot of a one-slot
        # task (every one, for a task spanning slots): released first, slot by slot.
        offset = len(pools)
        stale_home = self._away(
            stale,
            offset,
            home_slot,
            merged,
            lambda keys: Scripts.acquire(self, [], [], **common, release_reservations_in=keys),
        )
        offset += len(stale)
        released_home: list[tuple[str, list[PoolKeys]]] = []
        released_index: list[int] = []
        for lease_member, keys in released:
            release = functools.partial(
                Scripts.release, self, member=lease_member, lease_seconds=lease_seconds,
                max_handoffs=max_handoffs,
            )  # fmt: skip
            kept = self._away(keys, offset, home_slot, merged, release)
            offset += len(keys)
            if kept:
                released_home.append((lease_member, [k for _, k in kept]))
                released_index += [i for i, _ in kept]
        if home_slot is not None or not pools:
            if pools:
                outcome = super().acquire(
                    pools, requests, **common, release_reservations_in=[k for _, k in stale_home],
                    park_with=park_with, release_leases=released_home, arrival_ms=arrival_ms,
                )  # fmt: skip
                index = [*range(len(pools)), *(i for i, _ in stale_home), *released_index]
                merged.add(outcome, index, [*pools, *(k for _, k in stale_home)])
                return self._finish(merged, outcome.status, outcome.detail)
            return self._finish(merged, AcquireStatus.ACQUIRED, 0)
        return self._across(pools, requests, common, park_with, arrival_ms, merged)

    def _across(
        self,
        pools: Sequence[PoolKeys],
        requests: Sequence[tuple[int | None, int]],
        common: dict[str, Any],
        park_with: bytes | None,
        arrival_ms: float | None,
        merged: _Merged,
    ) -> Outcome:
        """Acquire the pools of several slots group by group; roll back at a block."""
        groups = self._groups(pools)
        acquired: list[list[int]] = []
        contended = 0
        try:
            for position, group in enumerate(groups):
                keys = [pools[i] for i in group]
                outcome = merged.add(super().acquire(
                    keys, [requests[i] for i in group], **common, park_with=park_with,
                    arrival_ms=arrival_ms,
                ), group, keys)  # fmt: skip
                if outcome.status == AcquireStatus.ACQUIRED:
                    acquired.append(group)
                    contended |= outcome.detail
                    continue
                blocked = group[outcome.detail - 1] + 1
                self._roll_back(pools, acquired, common, merged)
                acquired = []
                for later in groups[position + 1 :]:  # reservations held there go back
                    keys = [pools[i] for i in later]
                    merged.add(super().acquire([], [], **common, release_reservations_in=keys),
                               later, keys)  # fmt: skip
                return self._finish(merged, outcome.status, blocked)
        except BaseException:
            if acquired:  # best effort; else its lease expires
                try:
                    self._roll_back(pools, acquired, common, _Merged())
                except redis.exceptions.RedisError as exc:
                    logger.warning("cascade: could not roll back %s's partial acquire (%s); "
                                   "it expires with its lease", common["task_id"], exc)  # fmt: skip
            raise
        return self._finish(merged, AcquireStatus.ACQUIRED, contended)

    def _roll_back(
        self,
        pools: Sequence[PoolKeys],
        groups: list[list[int]],
        common: dict[str, Any],
        merged: _Merged,
    ) -> None:
        for group in groups:
            keys = [pools[i] for i in group]
            outcome = super().release(keys, member=common["member"],
                                      lease_seconds=common["lease_seconds"],
                                      max_handoffs=common["max_handoffs"])  # fmt: skip
            merged.add(outcome, group, keys)

    def _away(
        self,
        keys: Sequence[PoolKeys],
        offset: int,
        home_slot: int | None,
        merged: _Merged,
        call: Callable[[list[PoolKeys]], Outcome],
    ) -> list[tuple[int, PoolKeys]]:
        """Run ``call`` on the ``keys`` outside ``home_slot``, slot by slot; return the
        others (with their indices, counted from ``offset``)."""
        kept: list[tuple[int, PoolKeys]] = []
        by_slot: dict[int, list[int]] = {}
        for i, k in enumerate(keys, offset):
            if self._slot(k) == home_slot:
                kept.append((i, k))
            else:
                by_slot.setdefault(self._slot(k), []).append(i)
        for indices in by_slot.values():
            part = [keys[i - offset] for i in indices]
            merged.add(call(part), indices, part)
        return kept

    # -- the other multi-pool calls ------------------------------------------------------

    def release(
        self,
        pools: Sequence[PoolKeys],
        *,
        member: str,
        lease_seconds: float,
        max_handoffs: int,
        unclaimed: str | None = None,
    ) -> Outcome:
        """As :meth:`Scripts.release`, slot by slot (status: pools that still held it)."""
        groups = self._by_slot(pools)
        if len(groups) <= 1:
            return super().release(pools, member=member, lease_seconds=lease_seconds,
                                   max_handoffs=max_handoffs, unclaimed=unclaimed)  # fmt: skip
        merged, released = _Merged(), 0
        for group in groups:
            keys = [pools[i] for i in group]
            outcome = super().release(keys, member=member, lease_seconds=lease_seconds,
                                      max_handoffs=max_handoffs, unclaimed=unclaimed)  # fmt: skip
            released += merged.add(outcome, group, keys).status
        return self._finish(merged, released, 0)

    def renew(self, holders: Sequence[str], *, member: str, lease_seconds: float) -> list[int]:
        """As :meth:`Scripts.renew`, slot by slot."""
        groups = self._by_slot(holders)
        if len(groups) <= 1:
            return super().renew(holders, member=member, lease_seconds=lease_seconds)
        lost: list[int] = []
        for group in groups:
            part = super().renew([holders[i] for i in group], member=member,
                                 lease_seconds=lease_seconds)  # fmt: skip
            lost += [group[i] for i in part]
        return sorted(lost)

    def restamp(self, holders: Sequence[str], *, member: str) -> int:
        """As :meth:`Scripts.restamp`, slot by slot."""
        groups = self._by_slot(holders)
        if len(groups) <= 1:
            return super().restamp(holders, member=member)
        return sum(Scripts.restamp(self, [holders[i] for i in g], member=member) for g in groups)

    def confirm(self, handoffs: Sequence[tuple[str, str, bytes]]) -> int:
        """As :meth:`Scripts.confirm`, slot by slot."""
        groups = self._by_slot([parked for parked, _, _ in handoffs])
        if len(groups) <= 1:
            return super().confirm(handoffs)
        return sum(Scripts.confirm(self, [handoffs[i] for i in g]) for g in groups)

    # -- slots and replication ---------------------------------------------------------------

    def _slot(self, key: PoolKeys | str) -> int:
        return slot_of(self.client, key if isinstance(key, str) else key.capacity)

    def _slots(self, keys: Sequence[PoolKeys]) -> set[int]:
        return {self._slot(k) for k in keys}

    def _by_slot(self, keys: Sequence[PoolKeys | str]) -> list[list[int]]:
        """Indices of ``keys`` grouped by slot, in the order slots first appear."""
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self._slot(key), []).append(i)
        return list(groups.values())

    def _groups(self, pools: Sequence[PoolKeys]) -> list[list[int]]:
        """The order an acquire takes the slots in: groups without rate windows, by slot;
        then those with, shortest window first."""

        def order(group: list[int]) -> tuple[float, int]:
            windows = [w for i in group if (w := _window(pools[i])) is not None]
            return (min(windows) if windows else 0.0, self._slot(pools[group[0]]))

        return sorted(self._by_slot(pools), key=order)

    def _finish(self, merged: _Merged, status: int, detail: int) -> Outcome:
        """The merged outcome, with the hand-offs whose masters' replicas hold them."""
        kept: list[Handoff] = []
        waited: dict[int, bool] = {}
        for part in merged.parts:
            if not any(h.payload for h in part.handoffs):
                kept += part.handoffs
                continue
            master = node_client(self.client, part.keys.capacity)
            if id(master) not in waited:
                waited[id(master)] = self._replicated(part.keys)
            if waited[id(master)]:
                kept += part.handoffs
            else:
                logger.warning("cascade: no replica acknowledged %d hand-off(s) in time; they "
                               "go back in line when their reservations expire",
                               len(part.handoffs))  # fmt: skip
                kept += [h for h in part.handoffs if not h.payload]
        return Outcome(status, detail, tuple(kept), tuple(merged.dues))

    def _replicated(self, keys: PoolKeys) -> bool:
        """WAIT on the master of ``keys``' slot (a marker in that slot); False on failure."""
        marker = keys.waiters.removesuffix("waiters") + "replicated"
        field = f"{self._name}:{threading.get_ident()}"
        try:
            return self.replication.wait(marker, field, str(next(self._count)))
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade: WAIT failed (%s)", exc)
            return False


def _window(keys: PoolKeys) -> float | None:
    """The rate window (seconds) of the pool ``keys`` belong to, None if not a rate pool."""
    found = _NAME.search(keys.capacity)
    return None if found is None else window_of_pool(contended_pool(found.group(1)))
