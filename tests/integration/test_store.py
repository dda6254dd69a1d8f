"""ConstraintStore against a real Redis: expired entries go, live ones stay."""

from __future__ import annotations

import json
import time

import pytest

from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.pools.keys import constraints_hash
from cascade_celery.store import ConstraintStore
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


def _json(constraint: Constraint) -> str:
    return json.dumps(constraint.to_dict(), sort_keys=True)
