"""The Grafana dashboard and Prometheus config query only what the exporter serves."""

from __future__ import annotations

import json
import re

from celery import Celery

from cascade_celery import Cascade
from cascade_celery.exporter import CascadeCollector
from cascade_celery.pools.resources import ResourceManager
from tests.harness.redis_server import RedisServer
from tests.integration.ops.conftest import ROOT


def test_every_metric_the_dashboard_queries_is_exported(
    app: Celery, redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a pool with a holder and a line, so every gauge, counter and histogram has a sample
    pool = "constraint:concurrency:queue:emails"
    Cascade.for_app(app).limit("queue:emails", 1)
    resources = ResourceManager(redis_server.client(), prefix=unique_prefix, lease_seconds=30)
    assert resources.try_acquire("running", [(pool, 1)], {pool: 1}).lease is not None
    assert resources.park("parked", pool, 1, 1, b"{}")[0]
    exported = {  # sample names: a counter's family drops "_total", a histogram has "_bucket"
        sample.name
        for family in CascadeCollector(redis_server.client(), unique_prefix).collect()
        for sample in family.samples
    }

    dashboard = json.loads((ROOT / "example_project" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcascade_[a-z_]+", target["expr"])
    }
    variable = dashboard["templating"]["list"][1]["definition"]
    queried |= set(re.findall(r"\bcascade_[a-z_]+", variable))

    assert queried, "the dashboard queries no cascade metric"
    assert queried <= exported, queried - exported
    assert "exporter:9808" in (ROOT / "example_project" / "prometheus.yml").read_text()
