"""Fixtures the integration tests share: pools on the test's Redis, and its app's API."""

from __future__ import annotations

import pytest
from celery import Celery

from cascade_celery import Cascade
from cascade_celery.pools.resources import ResourceManager
from tests.harness.redis_server import RedisServer


@pytest.fixture
def resources(redis_server: RedisServer, unique_prefix: str) -> ResourceManager:
    """A ResourceManager on the test's Redis, under its prefix."""
    return ResourceManager(redis_server.client(), prefix=unique_prefix, lease_seconds=30)


@pytest.fixture
def api(app: Celery) -> Cascade:
    """The Cascade of the test's ``app`` fixture."""
    return Cascade.for_app(app)
