"""``cascade status`` and ``Cascade.status()`` on per-key pools (one row per family, its top
key values below it, ``--top``, ``--key``) and fair lines (waiting per fair value)."""

from __future__ import annotations

import json
import re
from typing import Any

from celery import Celery

from cascade_celery import Cascade
from cascade_celery.constraints.flow import Line
from cascade_celery.pools.resources import ResourceManager
from tests.integration.cli.conftest import ok

BASE = "constraint:concurrency:task:reports.build"
FAMILY = f"{BASE} kwarg:tenant"
FAIR = "constraint:concurrency:queue:emails"


def hold(resources: ResourceManager, pool: str, capacity: int, count: int, name: str) -> None:
    for n in range(count):
        assert resources.try_acquire(f"{name}-run-{n}", [(pool, 1)], {pool: capacity}).lease


def park(
    resources: ResourceManager, pool: str, capacity: int, count: int, name: str,
    line: Line | None = None,
) -> None:  # fmt: skip
    for n in range(count):
        parking = resources.park_in_line(f"{name}-wait-{n}", pool, 1, capacity, b"{}", line=line)
        assert parking.parked


def tenants(env: dict[str, str], resources: ResourceManager) -> None:
    """2 per tenant, acme 3: acme runs 3 with 2 parked, beta 2 with 1, gamma 1."""
    ok(env, "limit", "task:reports.build", "2", "--per", "kwarg:tenant", "--override", "acme=3")
    for tenant, capacity, running, parked in (("acme", 3, 3, 2), ("beta", 2, 2, 1),
                                              ("gamma", 2, 1, 0)):  # fmt: skip
        pool = f"{FAMILY}={tenant}"
        hold(resources, pool, capacity, running, tenant)
        park(resources, pool, capacity, parked, tenant)


def family_of(document: dict[str, Any]) -> dict[str, Any]:
    (family,) = [pool for pool in document["pools"] if pool["name"] == FAMILY]
    assert isinstance(family, dict)
    return family


def test_a_family_is_one_row_summing_its_key_values_with_the_top_ones_below(
    env: dict[str, str], resources: ResourceManager
) -> None:
    tenants(env, resources)

    family = family_of(json.loads(ok(env, "status", "--json")))

    summary = {k: family[k] for k in ("capacity", "running", "parked", "key", "live_values")}
    assert summary == {"capacity": 2, "running": 6, "parked": 3, "key": "kwarg:tenant",
                       "live_values": 3}  # fmt: skip
    assert family["governed_by"] == ["concurrency-task:reports.build"]
    assert family["oldest_wait_seconds"] is not None
    assert [(v["value"], v["capacity"], v["running"], v["parked"]) for v in family["values"]] == [
        ("acme", 3, 3, 2),
        ("beta", 2, 2, 1),
        ("gamma", 2, 1, 0),
    ]
    assert family["values"][0]["name"] == f"{FAMILY}=acme"
    table = ok(env, "status")
    assert re.search(rf"^{re.escape(FAMILY)}\s+2 per kwarg:tenant\s+6\s+3\s+\S+\s+"
                     r"concurrency-task:reports\.build$", table, re.MULTILINE), table  # fmt: skip
    rows = [line.split() for line in table.splitlines() if line.startswith("  kwarg:tenant=")]
    assert [row[:4] for row in rows] == [
        ["kwarg:tenant=acme", "3", "3", "2"],
        ["kwarg:tenant=beta", "2", "2", "1"],
        ["kwarg:tenant=gamma", "2", "1", "0"],
    ]
    assert BASE + " " not in table.replace(FAMILY, "")  # no keyed pool as a row of its own


def test_top_lists_fewer_values_and_says_how_many_more_there_are(
    env: dict[str, str], resources: ResourceManager
) -> None:
    tenants(env, resources)

    family = family_of(json.loads(ok(env, "status", "--json", "--top", "1")))
    assert [v["value"] for v in family["values"]] == ["acme"]
    assert (family["running"], family["parked"], family["live_values"]) == (6, 3, 3)
    table = ok(env, "status", "--top", "1")
    assert "  (+2 more values; --top, --key)" in table
    assert "kwarg:tenant=beta" not in table


def test_key_shows_that_values_pool_live_or_not(
    env: dict[str, str], resources: ResourceManager
) -> None:
    tenants(env, resources)
    ok(env, "limit", "queue:other", "1")

    family = family_of(json.loads(ok(env, "status", "--json", "--key", "beta")))
    assert [(v["value"], v["running"], v["parked"]) for v in family["values"]] == [("beta", 2, 1)]
    table = ok(env, "status", "--key", "beta")
    assert "constraint:concurrency:queue:other" not in table.split("\n\n")[0]  # plain: not shown
    assert re.search(r"^  kwarg:tenant=beta\s+2\s+2\s+1\s", table, re.MULTILINE), table

    (idle,) = family_of(json.loads(ok(env, "status", "--json", "--key", "nobody")))["values"]
    assert (idle["name"], idle["capacity"], idle["running"], idle["parked"]) == (
        f"{FAMILY}=nobody", 2, 0, 0,
    )  # fmt: skip


def test_a_fair_line_shows_how_many_wait_per_fair_value(
    env: dict[str, str], resources: ResourceManager
) -> None:
    ok(env, "limit", "queue:emails", "1", "--fair-by", "kwarg:tenant")
    hold(resources, FAIR, 1, 1, "someone")
    park(resources, FAIR, 1, 1, "beta", Line(fair="beta"))
    park(resources, FAIR, 1, 3, "acme", Line(fair="acme"))

    document = json.loads(ok(env, "status", "--json"))
    (pool,) = [p for p in document["pools"] if p["name"] == FAIR]
    assert (pool["running"], pool["parked"]) == (1, 4)
    assert pool["fair"] == {
        "key": "kwarg:tenant",
        "values": 2,
        "top": [{"value": "acme", "waiting": 3}, {"value": "beta", "waiting": 1}],
    }
    table = ok(env, "status")
    assert "fair lines (waiting per value, most first):\n" in table
    assert f'  {FAIR}  by kwarg:tenant, 2 values in turn: "acme" 3, "beta" 1\n' in table
    only = json.loads(ok(env, "status", "--json", "--key", "beta"))["pools"]
    assert [(p["name"], p["fair"]["top"]) for p in only] == [
        (FAIR, [{"value": "beta", "waiting": 1}])
    ]
    top = json.loads(ok(env, "status", "--json", "--top", "1"))["pools"]
    assert [p["fair"]["top"] for p in top] == [[{"value": "acme", "waiting": 3}]]


def test_cascade_status_returns_the_same(
    env: dict[str, str], app: Celery, resources: ResourceManager
) -> None:
    tenants(env, resources)

    (family,) = Cascade.for_app(app).status(top=2)

    assert (family.name, family.key, family.capacity, family.running, family.parked) == (
        FAMILY, "kwarg:tenant", 2, 6, 3,
    )  # fmt: skip
    assert [(p.value, p.running, p.parked) for p in family.values] == [
        ("acme", 3, 2),
        ("beta", 2, 1),
    ]
    (only,) = Cascade.for_app(app).status(key="gamma")[0].values
    assert (only.name, only.running, only.parked) == (f"{FAMILY}=gamma", 1, 0)
