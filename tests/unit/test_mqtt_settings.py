"""MqttSettings: parsing ``cascade_mqtt_url`` and the TLS/keepalive/timeout settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from celery import Celery
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cascade_celery.config import CascadeConfig, MqttSettings
from cascade_celery.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _no_celery_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery reads the broker URL from the environment too; keep these tests hermetic.
    for name in ("CELERY_BROKER_URL", "BROKER_URL", "CELERY_CONFIG_MODULE"):
        monkeypatch.delenv(name, raising=False)


def mqtt_of(**settings: Any) -> MqttSettings | None:
    settings.setdefault("cascade_redis_url", "redis://localhost:6379/1")
    app = Celery("t", set_as_current=False)
    app.conf.update(settings)
    return CascadeConfig.from_app(app).mqtt


# -- MqttSettings.from_url ----------------------------------------------------------------


def test_plain_mqtt_defaults_to_port_1883_without_tls() -> None:
    assert MqttSettings.from_url("mqtt://broker.internal") == MqttSettings(
        host="broker.internal", port=1883, tls=False
    )


def test_mqtts_defaults_to_port_8883_with_tls() -> None:
    assert MqttSettings.from_url("mqtts://broker.internal") == MqttSettings(
        host="broker.internal", port=8883, tls=True
    )


@pytest.mark.parametrize(
    ("url", "port", "tls"),
    [
        ("mqtt://broker:1884", 1884, False),
        ("mqtts://broker:443", 443, True),
        ("mqtt://broker:8883", 8883, False),
        ("mqtts://broker:1883", 1883, True),
        ("mqtt://broker:1", 1, False),
        ("mqtt://broker:65535", 65535, False),
    ],
)
def test_an_explicit_port_wins_over_the_default(url: str, port: int, tls: bool) -> None:
    parsed = MqttSettings.from_url(url)

    assert (parsed.host, parsed.port, parsed.tls) == ("broker", port, tls)


def test_credentials_are_read() -> None:
    parsed = MqttSettings.from_url("mqtts://worker:s3cret@broker:8883")

    assert (parsed.username, parsed.password) == ("worker", "s3cret")


def test_percent_encoded_credentials_are_decoded() -> None:
    parsed = MqttSettings.from_url("mqtt://ops%40shop:p%40ss%3Aw%2Frd%25%20x@broker")

    assert (parsed.username, parsed.password) == ("ops@shop", "p@ss:w/rd% x")


def test_a_username_alone_has_no_password() -> None:
    parsed = MqttSettings.from_url("mqtt://worker@broker")

    assert (parsed.username, parsed.password) == ("worker", None)


@pytest.mark.parametrize("url", ["mqtt://:s3cret@broker", "mqtts://:s3cret@broker:8883"])
def test_a_password_without_a_user_name_is_an_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="a password needs a user name") as caught:
        MqttSettings.from_url(url)

    assert "s3cret" not in str(caught.value)


def test_without_credentials_both_are_none() -> None:
    parsed = MqttSettings.from_url("mqtt://broker")

    assert (parsed.username, parsed.password) == (None, None)


def test_an_ipv6_host_is_read() -> None:
    assert MqttSettings.from_url("mqtt://[::1]:1884").host == "::1"


def test_options_are_passed_through() -> None:
    parsed = MqttSettings.from_url(
        "mqtts://broker", ca_certs="/ca.pem", keepalive=60, connect_timeout=2.5
    )

    assert (parsed.ca_certs, parsed.keepalive, parsed.connect_timeout) == ("/ca.pem", 60, 2.5)


@pytest.mark.parametrize("url", ["mqtt://", "mqtt://:1883", "mqtt:///path", "mqtts://user:pw@"])
def test_a_missing_host_is_an_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="cascade_mqtt_url: missing host"):
        MqttSettings.from_url(url)


@pytest.mark.parametrize(
    "url",
    ["http://broker", "tcp://broker:1883", "ws://broker", "broker:1883", "broker", ""],
)
def test_a_bad_scheme_is_an_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="scheme must be mqtt or mqtts"):
        MqttSettings.from_url(url)


@pytest.mark.parametrize(
    "url", ["mqtt://broker:abc", "mqtt://broker:-1", "mqtt://broker:65536", "mqtt://broker:1.5"]
)
def test_a_bad_port_is_an_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="cascade_mqtt_url: bad port"):
        MqttSettings.from_url(url)


def test_port_zero_is_an_error_not_the_default_port() -> None:
    # Port 0 can't be connected to; silently using 1883 instead hides a typo.
    with pytest.raises(ConfigurationError, match="port"):
        MqttSettings.from_url("mqtt://broker:0")


# -- redaction ----------------------------------------------------------------------------


def test_redacted_url_masks_the_password() -> None:
    parsed = MqttSettings.from_url("mqtts://worker:s3cret@broker:8884")

    assert parsed.redacted_url() == "mqtts://worker:***@broker:8884"


def test_redacted_url_without_credentials_is_the_url() -> None:
    assert MqttSettings.from_url("mqtt://broker").redacted_url() == "mqtt://broker:1883"


def test_repr_does_not_show_the_password() -> None:
    parsed = MqttSettings.from_url("mqtt://worker:s3cret@broker")

    assert "s3cret" not in repr(parsed)
    assert "s3cret" not in str(parsed)


_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30)


@given(username=_NAMES, password=_NAMES)
@settings(max_examples=1000, deadline=None)
def test_redacted_url_never_contains_the_password(username: str, password: str) -> None:
    host = "broker.internal"
    assume(password not in f"mqtts://{username}:***@{host}:8883")
    url = f"mqtts://{quote(username, safe='')}:{quote(password, safe='')}@{host}"

    parsed = MqttSettings.from_url(url)

    assert (parsed.username, parsed.password) == (username, password)
    assert password not in parsed.redacted_url()
    assert "password" not in repr(parsed)


# -- CascadeConfig.from_app ---------------------------------------------------------------


def test_without_an_mqtt_url_there_are_no_mqtt_settings() -> None:
    assert mqtt_of() is None


def test_without_an_mqtt_url_tls_files_are_ignored() -> None:
    assert mqtt_of(cascade_mqtt_ca_certs="/ca.pem") is None


def test_the_mqtt_url_is_parsed_with_defaults() -> None:
    assert mqtt_of(cascade_mqtt_url="mqtt://broker") == MqttSettings(
        host="broker", port=1883, keepalive=30, connect_timeout=10.0
    )


def test_tls_files_are_read() -> None:
    parsed = mqtt_of(
        cascade_mqtt_url="mqtts://worker:pw@broker",
        cascade_mqtt_ca_certs="/etc/cascade/ca.pem",
        cascade_mqtt_certfile="/etc/cascade/client.pem",
        cascade_mqtt_keyfile="/etc/cascade/client.key",
    )

    assert parsed == MqttSettings(
        host="broker",
        port=8883,
        tls=True,
        username="worker",
        password="pw",  # noqa: S106
        ca_certs="/etc/cascade/ca.pem",
        certfile="/etc/cascade/client.pem",
        keyfile="/etc/cascade/client.key",
    )


def test_a_ca_alone_is_enough() -> None:
    parsed = mqtt_of(cascade_mqtt_url="mqtts://broker", cascade_mqtt_ca_certs="/ca.pem")

    assert parsed is not None
    assert (parsed.ca_certs, parsed.certfile, parsed.keyfile) == ("/ca.pem", None, None)


@pytest.mark.parametrize(
    "files",
    [{"cascade_mqtt_certfile": "/client.pem"}, {"cascade_mqtt_keyfile": "/client.key"}],
    ids=["certfile-without-keyfile", "keyfile-without-certfile"],
)
def test_a_client_certificate_needs_both_files(files: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="certfile and cascade_mqtt_keyfile go together"):
        mqtt_of(cascade_mqtt_url="mqtts://broker", **files)


@pytest.mark.parametrize("option", ["ca_certs", "certfile", "keyfile"])
def test_a_tls_file_must_be_a_path_string(option: str) -> None:
    with pytest.raises(ConfigurationError, match=f"cascade_mqtt_{option} must be a file path"):
        mqtt_of(cascade_mqtt_url="mqtts://broker", **{f"cascade_mqtt_{option}": 42})


@pytest.mark.parametrize("url", ["http://broker", "mqtt://", "mqtt://broker:x", 1883, b"mqtt://b"])
def test_a_bad_mqtt_url_is_an_error(url: object) -> None:
    with pytest.raises(ConfigurationError, match="cascade_mqtt_url"):
        mqtt_of(cascade_mqtt_url=url)


@pytest.mark.parametrize("keepalive", [5, 30, 3600])
def test_keepalive_within_bounds_is_accepted(keepalive: int) -> None:
    parsed = mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_keepalive=keepalive)

    assert parsed is not None
    assert parsed.keepalive == keepalive


@pytest.mark.parametrize("keepalive", [4, 0, -30, 3601, 30.0, True, "30"])
def test_keepalive_out_of_bounds_or_not_an_integer_is_an_error(keepalive: object) -> None:
    with pytest.raises(
        ConfigurationError, match=r"cascade_mqtt_keepalive must be an integer 5\.\."
    ):
        mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_keepalive=keepalive)


@pytest.mark.parametrize("timeout", [0.1, 2.5, 60])
def test_connect_timeout_is_read(timeout: float) -> None:
    parsed = mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_connect_timeout=timeout)

    assert parsed is not None
    assert parsed.connect_timeout == float(timeout)


def test_connect_timeout_none_means_the_default() -> None:
    parsed = mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_connect_timeout=None)

    assert parsed is not None
    assert parsed.connect_timeout == 10.0


@pytest.mark.parametrize("timeout", [0.05, 0, -1, float("nan"), float("inf"), "10", True])
def test_a_bad_connect_timeout_is_an_error(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="cascade_mqtt_connect_timeout"):
        mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_connect_timeout=timeout)


def test_a_secret_and_its_window_are_read_and_never_shown() -> None:
    parsed = mqtt_of(
        cascade_mqtt_url="mqtt://broker",
        cascade_mqtt_secret="s3cret-s3cret-s3cret",  # noqa: S106
        cascade_mqtt_signature_max_age=60,
    )

    assert parsed is not None
    assert (parsed.secret, parsed.signature_max_age) == ("s3cret-s3cret-s3cret", 60.0)
    assert parsed.signer() is not None
    assert "s3cret" not in repr(parsed)


def test_without_a_secret_nothing_is_signed() -> None:
    parsed = mqtt_of(cascade_mqtt_url="mqtt://broker")

    assert parsed is not None
    assert (parsed.signer(), parsed.signature_max_age) == (None, 300.0)


@pytest.mark.parametrize("secret", ["", "short", "x" * 15, 1234567890123456789, b"x" * 32])
def test_a_weak_or_non_string_secret_is_an_error(secret: object) -> None:
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_secret=secret)


@pytest.mark.parametrize("max_age", [0, 0.5, -1, "300", float("inf"), True])
def test_a_bad_signature_window_is_an_error(max_age: object) -> None:
    with pytest.raises(ConfigurationError, match="cascade_mqtt_signature_max_age"):
        mqtt_of(cascade_mqtt_url="mqtt://broker", cascade_mqtt_secret="x" * 16,
                cascade_mqtt_signature_max_age=max_age)  # fmt: skip
