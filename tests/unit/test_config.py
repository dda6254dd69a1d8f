"""CascadeConfig.from_app: defaults, the broker fallback, and one clear error per bad setting."""

from __future__ import annotations

import math
from typing import Any

import pytest
from celery import Celery
from redis.sentinel import SentinelConnectionPool

from cascade_celery.config import CascadeConfig, MqttSettings, redact_url
from cascade_celery.errors import ConfigurationError
from cascade_celery.redis_client import RUNTIME_OPTIONS, client_for


@pytest.fixture(autouse=True)
def _no_celery_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery reads the broker URL from the environment too; keep these tests hermetic.
    for name in ("CELERY_BROKER_URL", "BROKER_URL", "CELERY_CONFIG_MODULE"):
        monkeypatch.delenv(name, raising=False)


def app_with(broker: str | None = None, **settings: Any) -> Celery:
    app = Celery("t", broker=broker, set_as_current=False)
    app.conf.update(settings)
    return app


def config_of(**settings: Any) -> CascadeConfig:
    settings.setdefault("cascade_redis_url", "redis://localhost:6379/1")
    return CascadeConfig.from_app(app_with(**settings))


def test_defaults() -> None:
    config = config_of()

    assert config == CascadeConfig(
        redis_url="redis://localhost:6379/1",
        redis_prefix="cascade",
        mqtt_url=None,
        mqtt_prefix="cascade",
        lease_seconds=30.0,
        sweep_interval=1.0,
        redis_retry_delay=1.0,
        redis_retry_max_delay=30.0,
        max_handoffs=500,
    )


def test_every_setting_is_read() -> None:
    config = config_of(
        cascade_redis_url="rediss://:pw@redis.internal:6380/2",
        cascade_redis_prefix="shop.prod-1",
        cascade_mqtt_url="mqtts://user:pw@broker:8883",
        cascade_mqtt_prefix="ops",
        cascade_lease_seconds=10,
        cascade_sweep_interval=0.5,
        cascade_redis_retry_delay=0.2,
        cascade_redis_retry_max_delay=5,
        cascade_max_handoffs=50,
        cascade_handoff_queues=False,
        cascade_direct_handoff=False,
    )

    assert config == CascadeConfig(
        redis_url="rediss://:pw@redis.internal:6380/2",
        redis_prefix="shop.prod-1",
        mqtt_url="mqtts://user:pw@broker:8883",
        mqtt_prefix="ops",
        lease_seconds=10.0,
        sweep_interval=0.5,
        redis_retry_delay=0.2,
        redis_retry_max_delay=5.0,
        max_handoffs=50,
        handoff_queues=False,
        direct_handoff=False,
        mqtt=MqttSettings.from_url("mqtts://user:pw@broker:8883"),
    )
    assert isinstance(config.lease_seconds, float)


def test_none_means_the_default() -> None:
    config = config_of(
        cascade_redis_prefix=None,
        cascade_mqtt_prefix=None,
        cascade_lease_seconds=None,
        cascade_max_handoffs=None,
    )

    assert (config.redis_prefix, config.mqtt_prefix) == ("cascade", "cascade")
    assert (config.lease_seconds, config.max_handoffs) == (30.0, 500)


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://secure:6380/0", "unix:///run/redis.sock"]
)
def test_redis_url_schemes(url: str) -> None:
    assert config_of(cascade_redis_url=url).redis_url == url


@pytest.mark.parametrize("url", ["mqtt://localhost:1883", "mqtts://user:pw@broker:8883"])
def test_mqtt_url_schemes(url: str) -> None:
    assert config_of(cascade_mqtt_url=url).mqtt_url == url


@pytest.mark.parametrize("broker", ["redis://broker:6379/0", "rediss://broker:6380/0"])
def test_redis_url_falls_back_to_a_redis_broker_url(broker: str) -> None:
    assert CascadeConfig.from_app(app_with(broker)).redis_url == broker


def test_cascade_redis_url_wins_over_the_broker_url() -> None:
    app = app_with("redis://broker:6379/0", cascade_redis_url="redis://pools:6379/1")

    assert CascadeConfig.from_app(app).redis_url == "redis://pools:6379/1"


@pytest.mark.parametrize("broker", [None, "amqp://guest@rabbit//", "memory://"])
def test_without_a_redis_url_from_anywhere_it_is_an_error(broker: str | None) -> None:
    with pytest.raises(ConfigurationError, match="cascade_redis_url"):
        CascadeConfig.from_app(app_with(broker))


BAD_SETTINGS = [
    ("cascade_redis_url", 6379),
    ("cascade_redis_url", "localhost:6379"),
    ("cascade_redis_url", "http://localhost:6379"),
    ("cascade_redis_url", "amqp://guest@rabbit//"),
    ("cascade_redis_prefix", ""),
    ("cascade_redis_prefix", "has space"),
    ("cascade_redis_prefix", "brace{"),
    ("cascade_redis_prefix", "x" * 65),
    ("cascade_redis_prefix", 5),
    ("cascade_mqtt_url", "tcp://localhost:1883"),
    ("cascade_mqtt_url", "localhost:1883"),
    ("cascade_mqtt_url", 1883),
    ("cascade_mqtt_prefix", "a/b"),
    ("cascade_mqtt_prefix", "#"),
    ("cascade_mqtt_prefix", "+"),
    ("cascade_lease_seconds", "30"),
    ("cascade_lease_seconds", True),
    ("cascade_lease_seconds", -1),
    ("cascade_lease_seconds", 0),
    ("cascade_lease_seconds", 0.05),
    ("cascade_lease_seconds", math.nan),
    ("cascade_lease_seconds", math.inf),
    ("cascade_sweep_interval", 0),
    ("cascade_sweep_interval", -0.5),
    ("cascade_sweep_interval", "1s"),
    ("cascade_redis_retry_delay", -1),
    ("cascade_redis_retry_delay", [1]),
    ("cascade_redis_retry_max_delay", 0),
    ("cascade_max_handoffs", 0),
    ("cascade_max_handoffs", -5),
    ("cascade_max_handoffs", 1.5),
    ("cascade_max_handoffs", True),
    ("cascade_max_handoffs", "500"),
    ("cascade_handoff_queues", "yes"),
    ("cascade_handoff_queues", 1),
    ("cascade_direct_handoff", "false"),
    ("cascade_direct_handoff", 0),
]


@pytest.mark.parametrize(("setting", "value"), BAD_SETTINGS)
def test_a_bad_value_is_an_error_naming_the_setting(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        config_of(**{setting: value})


def test_the_smallest_allowed_values_are_accepted() -> None:
    config = config_of(
        cascade_lease_seconds=0.1,
        cascade_sweep_interval=0.01,
        cascade_redis_retry_delay=0.01,
        cascade_redis_retry_max_delay=0.01,
        cascade_max_handoffs=1,
    )

    assert (config.lease_seconds, config.sweep_interval, config.max_handoffs) == (0.1, 0.01, 1)


def test_the_config_repr_never_shows_a_password() -> None:
    config = CascadeConfig(redis_url="redis://:s3cret@host/0", mqtt_url="mqtt://u:s3cret@host")

    assert "s3cret" not in repr(config)


SENTINELS = "sentinel://h1:26379;sentinel://h2:26380;sentinel://h3"


def test_a_sentinel_url_with_its_master_name() -> None:
    config = config_of(
        cascade_redis_url=SENTINELS,
        cascade_redis_transport_options={"master_name": "mymaster", "socket_timeout": 1},
        cascade_redis_wait_replicas=0,
        cascade_redis_wait_timeout=2,
    )

    assert config.redis_url == SENTINELS
    assert config.redis_transport_options == {"master_name": "mymaster", "socket_timeout": 1}
    assert (config.redis_wait_replicas, config.redis_wait_timeout) == (0, 2.0)


def test_wait_defaults_to_auto_and_half_a_second() -> None:
    config = config_of()

    assert (config.redis_wait_replicas, config.redis_wait_timeout) == (None, 0.5)
    assert config.redis_transport_options == {}


def test_a_sentinel_broker_lends_its_url_and_the_options_cascade_knows() -> None:
    app = app_with(SENTINELS)
    app.conf.broker_transport_options = {"master_name": "m", "visibility_timeout": 3600}

    config = CascadeConfig.from_app(app)

    assert (config.redis_url, config.redis_transport_options) == (SENTINELS, {"master_name": "m"})


def test_the_client_of_a_sentinel_url_asks_the_sentinels_for_the_master() -> None:
    options = {"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}, "db": 3}
    config = config_of(
        cascade_redis_url="sentinel://:mp@h1:26379/2;sentinel://h2:26380",
        cascade_redis_transport_options=options,
    )

    client = client_for(config, **RUNTIME_OPTIONS)

    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3  # the transport options win over the URL
    assert pool.connection_kwargs["password"] == "mp"  # noqa: S105
    assert pool.connection_kwargs["health_check_interval"] == 15
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp"  # noqa: S105
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 5.0
    client.close()


def test_transport_options_reach_a_plain_redis_client() -> None:
    config = config_of(cascade_redis_transport_options={"socket_timeout": 1.5})

    client = client_for(config, **RUNTIME_OPTIONS)

    assert client.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.0
    client.close()


BAD_REDIS_SETTINGS = [
    ({"cascade_redis_url": "sentinel://h1:26379"}, "master_name"),
    ({"cascade_redis_url": SENTINELS, "cascade_redis_transport_options": {}}, "master_name"),
    (
        {"cascade_redis_url": SENTINELS, "cascade_redis_transport_options": {"master_name": ""}},
        "master_name",
    ),
    ({"cascade_redis_url": "sentinel://h1:26379;redis://h2:6379"}, "cascade_redis_url"),
    ({"cascade_redis_url": "sentinel://h1:port"}, "cascade_redis_url: bad port"),
    ({"cascade_redis_url": "sentinel://:26379"}, "cascade_redis_url: missing host"),
    ({"cascade_redis_url": "sentinel://h1:26379/x"}, "cascade_redis_url: bad db"),
    ({"cascade_redis_url": "redis://h1;redis://h2"}, "cascade_redis_url"),
    ({"cascade_redis_url": "redis+sentinel://h1:26379"}, "cascade_redis_url"),
    ({"cascade_redis_transport_options": {"master_name": "m"}}, "only apply to a sentinel"),
    ({"cascade_redis_transport_options": {"visibility_timeout": 1}}, "unknown option"),
    ({"cascade_redis_transport_options": ["master_name"]}, "must be a dict"),
    (
        {
            "cascade_redis_url": SENTINELS,
            "cascade_redis_transport_options": {"master_name": "m", "sentinel_kwargs": 1},
        },
        "sentinel_kwargs",
    ),
    ({"cascade_redis_wait_replicas": -1}, "cascade_redis_wait_replicas"),
    ({"cascade_redis_wait_replicas": True}, "cascade_redis_wait_replicas"),
    ({"cascade_redis_wait_replicas": "1"}, "cascade_redis_wait_replicas"),
    ({"cascade_redis_wait_timeout": 0}, "cascade_redis_wait_timeout"),
]


@pytest.mark.parametrize(("settings", "message"), BAD_REDIS_SETTINGS)
def test_bad_redis_settings_are_errors_at_parse_time(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        config_of(**settings)


def test_a_sentinel_list_is_redacted_entry_by_entry() -> None:
    url = "sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2:26379"

    assert redact_url(url) == "sentinel://:***@h1:26379;sentinel://:***@h2:26379"
