"""ConstraintStore against a real Redis: expired entries go, live ones stay, a lost set shows."""

from __future__ import annotations

import json
import time

import pytest

from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.pools.keys import constraints_hash
from cascade_celery.store import ConstraintStore, HistoryLost
from tests.harness.redis_server import RedisServer


@pytest.fixture
def store(redis_server: RedisServer, unique_prefix: str) -> ConstraintStore:
    validate = HandlerRegistry.builtin().validate
    return ConstraintStore(redis_server.client(), unique_prefix, validate)


def pause(expires_at: float | None) -> Constraint:
    return Constraint("hold", "pause", Scope.parse("task:shop.charge"), expires_at=expires_at)


def test_an_expired_constraint_is_deleted_and_announced(store: ConstraintStore) -> None:
    expired = pause(time.time() - 1)
    store.client.hset(constraints_hash(store.prefix), "hold", _json(expired))
    pubsub = store.client.pubsub()
    pubsub.subscribe(store.channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    assert store.delete_expired(expired)

    assert store.ids() == set()
    assert store.version() == 1
    assert pubsub.get_message(timeout=5)["data"] == b"1"
    pubsub.close()


def test_an_entry_replaced_meanwhile_is_kept(store: ConstraintStore) -> None:
    old, new = pause(time.time() - 1), pause(time.time() + 600)
    store.put(new)

    assert not store.delete_expired(old)

    assert store.load()[1] == [new]


def test_storing_an_already_expired_constraint_removes_its_id(store: ConstraintStore) -> None:
    store.put(pause(time.time() + 600))

    assert store.put(pause(time.time() - 1))

    assert store.ids() == set()
    assert not store.put(pause(time.time() - 1))  # nothing left to change


def limit(constraint_id: str, value: int) -> Constraint:
    return Constraint(constraint_id, "concurrency", Scope.parse("task:shop.charge"),
                      params={"limit": value})  # fmt: skip


def test_a_write_that_continues_the_history_writes_nothing_into_a_set_redis_lost(
    store: ConstraintStore,
) -> None:
    store.put(limit("a", 1))
    store.client.flushdb()  # what a restart without persistence leaves

    with pytest.raises(HistoryLost):
        store.put(limit("b", 2), continuing=True)
    with pytest.raises(HistoryLost):
        store.delete("a", continuing=True)

    assert store.client.dbsize() == 0
    assert not store.has_history()


def test_a_write_that_continues_the_history_is_stored_while_it_lasts(
    store: ConstraintStore,
) -> None:
    store.put(limit("a", 1))

    assert store.put(limit("b", 2), continuing=True)
    assert not store.put(limit("b", 2), continuing=True)  # the same again changes nothing
    assert store.delete("a", continuing=True)
    assert not store.delete("a", continuing=True)

    assert store.load() == (3, [limit("b", 2)])


def test_a_restore_stores_the_whole_set_in_one_version(store: ConstraintStore) -> None:
    store.put(limit("a", 1))
    store.client.flushdb()
    pubsub = store.client.pubsub()
    pubsub.subscribe(store.channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    store.restore([limit("a", 1), limit("b", 2)])

    version, constraints = store.load()
    assert (version, sorted(c.id for c in constraints)) == (1, ["a", "b"])
    assert pubsub.get_message(timeout=5)["data"] == b"1"
    pubsub.close()


def test_restoring_nothing_starts_no_history(store: ConstraintStore) -> None:
    store.restore([])

    assert not store.has_history()


def _json(constraint: Constraint) -> str:
    return json.dumps(constraint.to_dict(), sort_keys=True)
