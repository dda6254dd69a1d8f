"""``Cascade.why`` and ``cascade why`` for a task waiting in a per-key pool or a fair line."""

from __future__ import annotations

import json

from cascade_celery import Cascade
from cascade_celery.constraints.flow import Line
from cascade_celery.pools.resources import ResourceManager
from tests.integration.cli.conftest import ok

KEYED = "constraint:concurrency:task:reports.build kwarg:tenant=acme"
FAIR = "constraint:concurrency:queue:emails"


def test_a_task_in_a_per_key_pool_is_told_its_key_value_and_place(
    env: dict[str, str], api: Cascade, resources: ResourceManager
) -> None:
    api.limit("task:reports.build", 1, per="kwarg:tenant")
    assert resources.try_acquire("running", [(KEYED, 1)], {KEYED: 1}).lease is not None
    for task_id in ("first", "second"):
        assert resources.park(task_id, KEYED, 1, 1, b"{}")[0]

    found = api.why("second")

    assert found.verdict == "parked"
    (pool,) = found.pools
    assert (pool.name, pool.key, pool.value, pool.position, pool.waiting) == (
        KEYED, "kwarg:tenant", "acme", 2, 2,
    )  # fmt: skip
    assert (pool.capacity, pool.used, pool.fair) == (1, 1, None)
    assert [c.id for c in pool.constraints] == ["concurrency-task:reports.build"]
    assert [h.task_id for h in pool.holders] == ["running"]
    text = ok(env, "why", "second")
    assert f"pool {KEYED}\n  line:        2 of 2, parked " in text
    assert '  key value:   kwarg:tenant = "acme" (a pool per value)\n' in text
    document = json.loads(ok(env, "why", "second", "--json"))
    (shown,) = document["pools"]
    assert (shown["key"], shown["value"], shown["fair"]) == ("kwarg:tenant", "acme", None)


def test_a_task_in_a_fair_line_is_told_its_place_in_its_values_line(
    env: dict[str, str], api: Cascade, resources: ResourceManager
) -> None:
    api.limit("queue:emails", 1, fair_by="kwarg:tenant")
    assert resources.try_acquire("running", [(FAIR, 1)], {FAIR: 1}).lease is not None
    for task_id, tenant in (("a1", "acme"), ("b1", "beta"), ("a2", "acme")):
        assert resources.park_in_line(task_id, FAIR, 1, 1, b"{}", line=Line(fair=tenant)).parked

    (pool,) = api.why("a2").pools

    assert (pool.position, pool.waiting, pool.key, pool.value) == (3, 3, None, None)
    assert pool.fair is not None
    assert (pool.fair.key, pool.fair.value, pool.fair.position, pool.fair.waiting) == (
        "kwarg:tenant", "acme", 2, 2,
    )  # fmt: skip
    assert pool.fair.values == 2
    text = ok(env, "why", "a2")
    assert '  fair line:   2 of 2 waiting for kwarg:tenant = "acme"; 2 values in turn\n' in text
    (shown,) = json.loads(ok(env, "why", "b1", "--json"))["pools"]
    assert shown["fair"] == {
        "key": "kwarg:tenant", "value": "beta", "position": 1, "waiting": 1, "values": 2,
    }  # fmt: skip


def test_a_task_holding_a_per_key_slot_is_found_in_its_pool(
    api: Cascade, resources: ResourceManager
) -> None:
    api.limit("task:reports.build", 1, per="kwarg:tenant")
    assert resources.try_acquire("running", [(KEYED, 1)], {KEYED: 1}).lease is not None

    found = api.why("running")

    assert found.verdict == "running"
    assert [(p.name, p.value, p.position) for p in found.pools] == [(KEYED, "acme", None)]
