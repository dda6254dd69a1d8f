"""On a Redis Cluster: pool calls whose pools lie in several hash slots, one script per slot.

A Lua script may touch the keys of one slot only, and each pool's keys share one (its
hash tag), so a call on one pool, or on pools that happen to share a slot, runs as on
one server. :class:`SlotScripts` splits the others through :class:`Scripts`' own
methods, and maps each part's hand-offs and dues back to the caller's pool indices.

**All-or-none acquire across slots.** The task's pools are grouped by slot and the
groups acquired one after another: first the group whose pool blocked a task in this
process last (likely to block again: the task parks there without taking the others
first), then pools a release frees fully, then rate windows, shortest first (by slot
within each). No order is needed against deadlock (nothing waits); trying the blocking
pool first keeps tasks out of lines they don't wait for (a task that found a pool held
by another's attempt waits in that pool's line: handed off again at the rollback, it
tries the blocking pool first and moves to its line). A group that blocks
parks the task there, in the same script, as on one server (its reservations in that
group go back); the groups acquired before it are released again (their room goes to
their waiters) and the reservations it holds in later groups are given back. The
leases an acquire releases first, and reservations it gives back in pools it no longer
needs, go with the script on their slot (a script of their own where no pool of the task
is): a task spanning two slots costs two scripts, as many round trips.

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

import itertools
import logging
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.rate import window_of_pool
from cascade_celery.pools.keys import PoolKeys, contended_pool
from cascade_celery.pools.scripts import AcquireStatus, Handoff, Outcome, Scripts
from cascade_celery.redis_client import ReplicaWait
from cascade_celery.redis_cluster import is_cluster, node_client, slot_of

logger = logging.getLogger(__name__)

_NAME = re.compile(r"\{pool:([^{}]*)\}")
#: How many pools that blocked a task :class:`SlotScripts` remembers.
BLOCKED_REMEMBERED = 1024


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
    dropped: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, outcome: Outcome, index: Sequence[int], keys: Sequence[PoolKeys]) -> Outcome:
        """Take ``outcome`` of a call on ``keys`` (the caller's pools ``index``)."""
        handoffs = [replace(h, pool_index=index[h.pool_index]) for h in outcome.handoffs]
        self.parts.append(_Part(keys[0], handoffs))
        self.dues += [(index[i], due) for i, due in outcome.dues]
        self.dropped += outcome.dropped
        return outcome


@dataclass
class _Extras:
    """What an acquire gives back besides taking its pools, by slot, with the caller's
    pool indices: reservations (stale pools), and ended leases' pools (member, pools)."""

    stale: dict[int, list[tuple[int, PoolKeys]]]
    released: dict[int, list[tuple[str, list[tuple[int, PoolKeys]]]]]

    @classmethod
    def of(
        cls,
        scripts: SlotScripts,
        offset: int,
        stale: Sequence[PoolKeys],
        leases: Sequence[tuple[str, Sequence[PoolKeys]]],
    ) -> _Extras:
        """Group ``stale`` and ``leases`` (indices from ``offset`` on) by slot."""
        extras = cls({}, {})
        for i, keys in enumerate(stale, offset):
            extras.stale.setdefault(scripts._slot(keys), []).append((i, keys))
        i = offset + len(stale)
        for member, lease_pools in leases:
            by_slot: dict[int, list[tuple[int, PoolKeys]]] = {}
            for keys in lease_pools:
                by_slot.setdefault(scripts._slot(keys), []).append((i, keys))
                i += 1
            for slot, part in by_slot.items():
                extras.released.setdefault(slot, []).append((member, part))
        return extras

    def slots(self) -> list[int]:
        """The slots with something to give back, in a stable order."""
        return sorted(set(self.stale) | set(self.released))


class SlotScripts(Scripts):
    """:class:`Scripts` on a Redis Cluster: calls spanning slots are made slot by slot."""

    def __init__(self, client: redis.Redis, replication: ReplicaWait) -> None:
        super().__init__(client)
        self.client = client
        self.replication = replication
        self._name = uuid.uuid4().hex[:12]
        self._count = itertools.count()
        #: Pools (their capacity key) that blocked a task spanning slots, by how recently.
        self._blocked: dict[str, int] = {}
        self._blocks = itertools.count(1)

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
        lines: Sequence[Line | None] = (),
    ) -> Outcome:
        """As :meth:`Scripts.acquire`, all-or-none across slots (the module docstring).

        The leases it releases first and the reservations it gives back go with the call
        on their slot; those in slots no required pool is in are done first, a call per slot.
        """
        common: dict[str, Any] = {
            "task_id": task_id, "member": member, "lease_seconds": lease_seconds,
            "max_handoffs": max_handoffs,
        }  # fmt: skip
        extras = _Extras.of(self, len(pools), release_reservations_in, release_leases)
        if len(self._slots(pools) | set(extras.slots())) <= 1:
            return super().acquire(pools, requests, **common,
                                   release_reservations_in=release_reservations_in,
                                   park_with=park_with, release_leases=release_leases,
                                   arrival_ms=arrival_ms, lines=lines)  # fmt: skip
        groups = self._groups(pools)
        merged = _Merged()
        for slot in extras.slots():
            if slot not in {self._slot(pools[group[0]]) for group in groups}:
                self._call(merged, pools, requests, [], extras, slot, common)
        acquired: list[list[int]] = []
        contended = 0
        try:
            for position, group in enumerate(groups):
                slot = self._slot(pools[group[0]])
                outcome = self._call(merged, pools, requests, group, extras, slot, common,
                                     park_with=park_with, arrival_ms=arrival_ms,
                                     lines=[lines[i] for i in group] if lines else ())  # fmt: skip
                if outcome.status == AcquireStatus.ACQUIRED:
                    acquired.append(group)
                    contended |= outcome.detail
                    continue
                blocked = group[outcome.detail - 1] + 1
                self._note_blocked(pools[blocked - 1])
                acquired, done = [], acquired
                self._roll_back(pools, done, common, merged)
                for later in groups[position + 1 :]:  # reservations held there go back
                    self._call(merged, pools, requests, [], extras, self._slot(pools[later[0]]),
                               common, giving_back=later)  # fmt: skip
                return self._finish(merged, outcome.status, blocked)
        except BaseException:
            if acquired:  # best effort; else its lease expires
                try:
                    self._roll_back(pools, acquired, common, _Merged())
                except redis.exceptions.RedisError as exc:
                    logger.warning("cascade: could not roll back %s's partial acquire (%s); "
                                   "it expires with its lease", task_id, exc)  # fmt: skip
            raise
        return self._finish(merged, AcquireStatus.ACQUIRED, contended)

    def _call(
        self,
        merged: _Merged,
        pools: Sequence[PoolKeys],
        requests: Sequence[tuple[int | None, int]],
        group: Sequence[int],
        extras: _Extras,
        slot: int,
        common: dict[str, Any],
        *,
        giving_back: Sequence[int] = (),
        park_with: bytes | None = None,
        arrival_ms: float | None = None,
        lines: Sequence[Line | None] = (),
    ) -> Outcome:
        """One acquire script on ``slot``: the required pools ``group``, reservations given
        back in ``giving_back`` (required pools, after a block) and the slot's extras."""
        stale = [*((i, pools[i]) for i in giving_back), *extras.stale.get(slot, [])]
        released = extras.released.get(slot, [])
        outcome = Scripts.acquire(
            self, [pools[i] for i in group], [requests[i] for i in group], **common,
            release_reservations_in=[k for _, k in stale],
            release_leases=[(m, [k for _, k in keys]) for m, keys in released],
            park_with=park_with, arrival_ms=arrival_ms, lines=lines,
        )  # fmt: skip
        index = [*group, *(i for i, _ in stale), *(i for _, keys in released for i, _ in keys)]
        keys = [*(pools[i] for i in group), *(k for _, k in stale),
                *(k for _, ks in released for _, k in ks)]  # fmt: skip
        return merged.add(outcome, index, keys)

    def _roll_back(
        self,
        pools: Sequence[PoolKeys],
        groups: list[list[int]],
        common: dict[str, Any],
        merged: _Merged,
    ) -> None:
        for group in groups:
            keys = [pools[i] for i in group]
            outcome = Scripts.release(self, keys, member=common["member"],
                                      lease_seconds=common["lease_seconds"],
                                      max_handoffs=common["max_handoffs"])  # fmt: skip
            merged.add(outcome, group, keys)

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
        """The order an acquire takes the slots in: the group with the pool that blocked
        a task here last, first; then groups without rate windows, by slot; then those
        with, shortest window first."""

        def order(group: list[int]) -> tuple[int, float, int]:
            blocked = max((self._blocked.get(pools[i].capacity, 0) for i in group), default=0)
            windows = [w for i in group if (w := _window(pools[i])) is not None]
            return (-blocked, min(windows) if windows else 0.0, self._slot(pools[group[0]]))

        return sorted(self._by_slot(pools), key=order)

    def _note_blocked(self, keys: PoolKeys) -> None:
        """Remember that ``keys``' pool blocked a task now (bounded: oldest forgotten)."""
        self._blocked.pop(keys.capacity, None)
        self._blocked[keys.capacity] = next(self._blocks)
        while len(self._blocked) > BLOCKED_REMEMBERED:
            del self._blocked[next(iter(self._blocked))]

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
        return Outcome(status, detail, tuple(kept), tuple(merged.dues), tuple(merged.dropped))

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
