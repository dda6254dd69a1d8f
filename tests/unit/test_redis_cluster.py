"""Redis Cluster settings: the URL, its options, and which keys share a hash slot."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from cascade_celery.config import CascadeConfig, redact_url
from cascade_celery.errors import REDIS_DOWN, ConfigurationError
from cascade_celery.pools.keys import (
    constraints_applied,
    constraints_hash,
    constraints_signed,
    constraints_version,
    pool_keys,
)
from cascade_celery.redis_client import RUNTIME_OPTIONS, client_for, redis_client
from cascade_celery.redis_cluster import Cluster, ClusterUrl
from tests.harness.waiting import free_port


def config_of(url: str, options: dict[str, Any] | None = None) -> CascadeConfig:
    app = Celery("t", set_as_current=False)
    app.conf.update(cascade_redis_url=url, cascade_redis_transport_options=options)
    return CascadeConfig.from_app(app)


def test_a_cluster_url_lists_its_seed_nodes_with_credentials() -> None:
    parsed = ClusterUrl.parse("redis+cluster://app:s%40cret@h1:7000,h2:7001,[::1]:7002,h4/0")

    assert parsed.nodes == (("h1", 7000), ("h2", 7001), ("::1", 7002), ("h4", 6379))
    assert (parsed.username, parsed.password, parsed.tls) == ("app", "s@cret", False)
    assert ClusterUrl.parse("rediss+cluster://h1:7000").tls


def test_the_client_of_a_cluster_url_is_built_without_contacting_a_node() -> None:
    config = config_of("rediss+cluster://:pw@h1:7000,h2:7001", {"socket_timeout": 2.0})

    client = client_for(config, **RUNTIME_OPTIONS)

    assert isinstance(client, Cluster)
    settings = client._settings
    assert [(n.host, n.port) for n in settings["startup_nodes"]] == [("h1", 7000), ("h2", 7001)]
    assert (settings["password"], settings["ssl"], settings["socket_timeout"]) == ("pw", True, 2.0)
    client.close()  # never connected: nothing to close


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis+cluster://h1:7000/1", None, "only db 0"),
        ("redis+cluster://h1:7000", {"db": 2}, "only db 0"),
        ("redis+cluster://h1:port", None, "bad cluster node"),
        ("redis+cluster://h1:7000,", None, "bad cluster node"),
        ("redis+cluster://h1:70000", None, "bad cluster node"),
        ("redis+cluster://h1:7000?ssl_cert_reqs=none", None, "takes no query"),
        ("redis+cluster://h1:7000", {"master_name": "m"}, "only apply to a sentinel"),
        ("redis+cluster://h1:7000;redis+cluster://h2:7000", None, "only sentinel://"),
        ("redis+cluster://h1:7000", {"shards": 3}, "unknown option"),
    ],
)
def test_a_bad_cluster_setting_is_named(
    url: str, options: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        config_of(url, options)


def test_a_cluster_url_s_password_is_redacted() -> None:
    assert redact_url("redis+cluster://u:pw@h1:1,h2:2") == "redis+cluster://u:***@h1:1,h2:2"


def test_the_constraint_set_s_keys_share_one_slot_whatever_the_prefix() -> None:
    for prefix in ("cascade", "shop-2"):
        keys = [f(prefix) for f in (constraints_hash, constraints_version,
                                    constraints_applied, constraints_signed)]  # fmt: skip
        assert len({key_slot(key.encode()) for key in keys}) == 1


@given(st.text(min_size=1, max_size=40))
def test_a_pool_s_keys_share_one_slot(name: str) -> None:
    assert len({key_slot(key.encode()) for key in pool_keys("cascade", name)}) == 1


def test_a_cluster_no_seed_answers_is_redis_down_for_the_runtime() -> None:
    client = redis_client(f"redis+cluster://127.0.0.1:{free_port()}", {}, **RUNTIME_OPTIONS)

    with pytest.raises(REDIS_DOWN):
        client.get("x")
    with pytest.raises(REDIS_DOWN):  # and again: it tries to connect on every call
        client.get("x")
    client.close()
