"""``cascade exporter``: a real exporter process scraped over HTTP, against Redis's state."""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from cascade_celery import Cascade
from cascade_celery.exporter.stats import WAIT_BUCKETS_MS
from cascade_celery.pools.outcomes import Lease
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.status import read_status
from tests.harness.redis_server import RedisServer
from tests.integration.ops.conftest import buckets, exporter, kinds, pool_sample, scrape

EMAILS = "constraint:concurrency:queue:emails"
SMS = "constraint:concurrency:queue:sms"
PUSH = "constraint:concurrency:queue:push"


def fill(api: Cascade, resources: ResourceManager, scope: str, pool: str, parked: int) -> Lease:
    """A limit of 1 on ``scope``, held (the lease returned), with ``parked`` tasks in line."""
    api.limit(scope, 1)
    lease = resources.try_acquire(f"{scope}-running", [(pool, 1)], {pool: 1}).lease
    assert lease is not None
    for n in range(parked):
        assert resources.park(f"{scope}-{n}", pool, 1, 1, b"{}")[0]
    return lease


def test_the_metrics_match_what_redis_holds(
    env: dict[str, str], app: Celery, resources: ResourceManager, tmp_path: Path,
    redis_server: RedisServer, unique_prefix: str,
) -> None:  # fmt: skip
    # Given two limited pools with lines, a pause, and two processes reporting
    api = Cascade.for_app(app)
    fill(api, resources, "queue:emails", EMAILS, 2)
    fill(api, resources, "queue:sms", SMS, 1)
    api.pause("queue:later")
    store = api._store()
    store.report_applied("host-a:1", store.version(), ttl=60)
    store.report_applied("host-b:2", 0, ttl=60)

    with exporter("tests.apps.cli_app", env, log=tmp_path / "exporter.log") as port:
        samples = scrape(port)

    # Then every pool's gauges are what read_status reads from Redis
    pools = read_status(redis_server.client(), unique_prefix, api.constraints())
    for pool in (p for p in pools if not p.is_idle):
        assert pool_sample(samples, "cascade_pool_capacity_units", pool.name) == pool.capacity
        assert pool_sample(samples, "cascade_pool_running_units", pool.name) == pool.running
        assert pool_sample(samples, "cascade_pool_parked_tasks", pool.name) == pool.parked
    assert pool_sample(samples, "cascade_pool_parked_tasks", EMAILS) == 2
    assert pool_sample(samples, "cascade_pool_running_units", SMS) == 1
    assert pool_sample(samples, "cascade_pool_oldest_wait_seconds", EMAILS) is not None
    assert (
        pool_sample(samples, "cascade_pool_oldest_wait_seconds", "constraint:pause:queue:later")
        is None
    )
    assert samples[("cascade_constraints", (("type", "concurrency"),))] == 2
    assert samples[("cascade_constraints", (("type", "pause"),))] == 1
    assert samples[("cascade_constraints", (("type", "rate_limit"),))] == 0
    assert samples[("cascade_constraints_version", ())] == store.version()
    assert samples[("cascade_worker_processes", ())] == 2
    assert samples[("cascade_worker_processes_behind", ())] == 1
    assert samples[("cascade_pools_folded", ())] == 0
    assert samples[("cascade_up", ())] == 1


def test_pools_beyond_max_pools_are_summed_as_other(
    env: dict[str, str], app: Celery, resources: ResourceManager, tmp_path: Path
) -> None:
    api = Cascade.for_app(app)
    fill(api, resources, "queue:emails", EMAILS, 2)
    fill(api, resources, "queue:sms", SMS, 1)
    api.limit("queue:idle", 4)

    log = tmp_path / "exporter.log"
    with exporter("tests.apps.cli_app", env, "--max-pools", "1", log=log) as port:
        samples = scrape(port)

    pools = {
        dict(labels)["pool"] for (name, labels) in samples if name == "cascade_pool_parked_tasks"
    }
    assert pools == {EMAILS, "_other"}  # the longest line keeps its label
    assert pool_sample(samples, "cascade_pool_parked_tasks", "_other") == 1
    assert pool_sample(samples, "cascade_pool_running_units", "_other") == 1
    assert pool_sample(samples, "cascade_pool_capacity_units", "_other") is None
    assert samples[("cascade_pools_folded", ())] == 2


def test_an_unreachable_redis_reads_as_down(
    env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    with exporter("tests.apps.cli_app", env, log=tmp_path / "exporter.log") as port:
        assert scrape(port)[("cascade_up", ())] == 1
        redis_server.kill()
        samples = scrape(port)

    assert samples == {("cascade_up", ()): 0}


def test_the_counters_and_histograms_count_what_the_scripts_did(
    env: dict[str, str], app: Celery, resources: ResourceManager, tmp_path: Path
) -> None:
    # Given two tasks parked behind a holder of emails, and sms held with nobody waiting
    api = Cascade.for_app(app)
    holder = fill(api, resources, "queue:emails", EMAILS, 2)
    fill(api, resources, "queue:sms", SMS, 0)

    with exporter("tests.apps.cli_app", env, log=tmp_path / "exporter.log") as port:
        before = scrape(port)
        # When the holder ends, handing its slot to the first in line
        assert len(resources.release(holder)) == 1
        after = scrape(port)

    # Then every pool has every counter, at 0 until something happened
    assert pool_sample(before, "cascade_pool_parked_total", EMAILS) == 2
    assert kinds(before, "cascade_pool_handoffs_total", EMAILS) == {
        "direct": 0, "published": 0
    }  # fmt: skip
    assert pool_sample(before, "cascade_pool_parked_total", SMS) == 0
    assert kinds(before, "cascade_pool_admitted_total", SMS) == {"acquire": 1, "reservation": 0}
    assert pool_sample(before, "cascade_pool_wait_seconds_count", EMAILS) == 0
    # And after the release: one published hand-off with its wait observed, one release
    assert kinds(after, "cascade_pool_handoffs_total", EMAILS) == {"direct": 0, "published": 1}
    assert pool_sample(after, "cascade_pool_released_total", EMAILS) == 1
    assert pool_sample(after, "cascade_pool_wait_seconds_count", EMAILS) == 1
    assert pool_sample(after, "cascade_pool_handoff_seconds_count", EMAILS) == 0
    wait = buckets(after, "cascade_pool_wait_seconds", EMAILS)
    assert [le for le, _ in wait] == [b / 1000 for b in WAIT_BUCKETS_MS] + [float("inf")]
    assert [count for _, count in wait] == sorted(count for _, count in wait)  # cumulative
    assert wait[-1][1] == 1
    assert pool_sample(after, "cascade_pool_wait_seconds_sum", EMAILS) >= 0


def test_the_counters_of_pools_beyond_max_pools_are_summed_as_other(
    env: dict[str, str], app: Celery, resources: ResourceManager, tmp_path: Path
) -> None:
    api = Cascade.for_app(app)
    fill(api, resources, "queue:emails", EMAILS, 2)
    fill(api, resources, "queue:sms", SMS, 1)
    fill(api, resources, "queue:push", PUSH, 1)

    log = tmp_path / "exporter.log"
    with exporter("tests.apps.cli_app", env, "--max-pools", "1", log=log) as port:
        samples = scrape(port)

    assert pool_sample(samples, "cascade_pool_parked_total", EMAILS) == 2
    assert pool_sample(samples, "cascade_pool_parked_total", "_other") == 2
    assert kinds(samples, "cascade_pool_admitted_total", "_other") == {
        "acquire": 2, "reservation": 0
    }  # fmt: skip
    assert pool_sample(samples, "cascade_pool_wait_seconds_count", "_other") == 0
