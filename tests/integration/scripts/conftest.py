"""Fixtures for the pool scripts against a real redis-server, through ResourceManager."""

from __future__ import annotations

import pytest

from cascade_celery.pools.resources import ResourceManager
from tests.harness.redis_server import RedisServer
from tests.integration.scripts.pools import Pools


@pytest.fixture
def pools(redis_server: RedisServer, unique_prefix: str) -> Pools:
    return Pools(redis_server.client(), unique_prefix)


@pytest.fixture
def rm(pools: Pools) -> ResourceManager:
    return pools.manager()
