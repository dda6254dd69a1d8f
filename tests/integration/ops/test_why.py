"""``Cascade.why`` and ``cascade why``: lines, holders and rate dues set up through the scripts."""

from __future__ import annotations

import json

from cascade_celery import Cascade
from cascade_celery.pools.outcomes import Lease
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.why_answer import Why
from tests.integration.cli.conftest import ok

POOL = "constraint:concurrency:queue:emails"


def line_of_two(api: Cascade, resources: ResourceManager) -> Lease:
    """A limit of 1 held by ``running``, with ``first`` and ``second`` parked behind it."""
    api.limit("queue:emails", 1)
    lease = resources.try_acquire("running", [(POOL, 1)], {POOL: 1}).lease
    assert lease is not None
    assert resources.park("first", POOL, 1, 1, b"{}")[0]
    assert resources.park("second", POOL, 1, 1, b"{}")[0]
    return lease


def test_a_parked_task_is_told_its_pool_constraint_place_and_holder(
    api: Cascade, resources: ResourceManager
) -> None:
    line_of_two(api, resources)

    found = api.why("second")

    assert (found.verdict, found.state) == ("parked", None)  # the CLI app has no backend
    (pool,) = found.pools
    assert (pool.name, pool.position, pool.waiting) == (POOL, 2, 2)
    assert (pool.capacity, pool.used, pool.held) == (1, 1, None)
    assert [(c.id, c.type, str(c.scope), c.expires_at) for c in pool.constraints] == [
        ("concurrency-queue:emails", "concurrency", "queue:emails", None)
    ]
    (holder,) = pool.holders
    assert (holder.task_id, holder.kind, holder.units, holder.age_seconds) == (
        "running", "running", 1, None,
    )  # fmt: skip
    assert 0 < holder.expires_in_seconds <= 30
    assert pool.waited_seconds is not None
    assert pool.waited_seconds >= 0
    assert api.why("first").pools[0].position == 1


def test_the_running_task_holds_its_slot_and_a_handed_off_one_its_reservation(
    api: Cascade, resources: ResourceManager
) -> None:
    lease = line_of_two(api, resources)
    running = api.why("running")
    assert running.verdict == "running"
    (pool,) = running.holding
    assert pool.held is not None
    assert pool.held.kind == "running"
    assert (pool.position, pool.waiting) == (None, 2)

    # When the slot frees: the first waiter is handed off (a reservation, not started)
    resources.release(lease)
    handed = api.why("first")
    assert handed.verdict == "reserved"
    (pool,) = handed.holding
    assert pool.held is not None
    assert pool.held.kind == "reserved"
    assert pool.held.age_seconds is not None
    assert pool.held.age_seconds < 30
    assert api.why("second").pools[0].position == 1


def test_an_unknown_task_is_unknown(api: Cascade, resources: ResourceManager) -> None:
    line_of_two(api, resources)
    assert api.why("nobody") == Why("nobody", (), None)
    assert api.why("nobody").verdict == "unknown"


def test_a_rate_pool_says_when_the_next_admission_is_due(
    env: dict[str, str], api: Cascade, resources: ResourceManager
) -> None:
    api.rate("queue:emails", "2/m")
    pool = "constraint:rate_limit:queue:emails@1m"
    for task_id in ("a", "b"):
        assert resources.try_acquire(task_id, [(pool, 1)], {pool: 2}).lease is not None
    assert resources.park("c", pool, 1, 2, b"{}")[0]

    (view,) = api.why("c").pools
    assert (view.position, view.capacity, view.used, view.is_rate_pool) == (1, 2, 2, True)
    assert [(h.task_id, h.kind) for h in view.holders] == [("a", "admitted"), ("b", "admitted")]
    text = ok(env, "why", "c")
    assert "  next admission: in " in text
    assert "    admitted  a  1 unit, admitted " in text
    assert all(h.age_seconds is not None and h.age_seconds < 60 for h in view.holders)
    assert view.next_due_in_seconds is not None
    assert 0 < view.next_due_in_seconds <= 60.01  # the window and its guard
    assert view.announced_due_in_seconds is not None
    assert abs(view.announced_due_in_seconds - view.next_due_in_seconds) < 1
    assert api.why("a").verdict == "admitted"  # the window still counts it


def test_cli_why_prints_the_line_and_json(
    env: dict[str, str], api: Cascade, resources: ResourceManager
) -> None:
    line_of_two(api, resources)

    text = ok(env, "why", "second")
    assert text.startswith("task second: parked\n")
    assert f"pool {POOL}\n  line:        2 of 2, parked " in text
    assert "  capacity:    1, 1 in use\n" in text
    assert "  governed by: concurrency-queue:emails (concurrency on queue:emails" in text
    assert "    running   running  1 unit, lease expires in " in text

    document = json.loads(ok(env, "why", "second", "--json"))
    assert (document["task_id"], document["verdict"], document["state"]) == (
        "second", "parked", None,
    )  # fmt: skip
    (pool,) = document["pools"]
    assert (pool["name"], pool["position"], pool["waiting"], pool["capacity"]) == (POOL, 2, 2, 1)
    assert [c["id"] for c in pool["constraints"]] == ["concurrency-queue:emails"]
    assert [(h["task_id"], h["kind"]) for h in pool["holders"]] == [("running", "running")]

    assert ok(env, "why", "nobody").startswith(
        "task nobody: cascade knows nothing of it (not parked, holding no slot)"
    )
    assert json.loads(ok(env, "why", "nobody", "--json"))["pools"] == []
