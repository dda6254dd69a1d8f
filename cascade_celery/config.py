"""CascadeConfig: every ``cascade_*`` setting, parsed and checked once.

The README's settings table lists each one with its default and meaning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from celery import Celery

from cascade_celery.errors import ConfigurationError
from cascade_celery.mqtt.signing import Signer
from cascade_celery.redis_client import SCHEMES, check_transport_options, sentinel_part

_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: A shorter shared secret is too easy to guess.
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the MQTT broker, parsed from ``cascade_mqtt_url`` and the TLS settings."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive: int = 30
    connect_timeout: float = 10.0
    #: Shared secret of signed constraints (None: payloads are not signed).
    secret: str | None = field(default=None, repr=False)
    #: How old a live signed payload may be, in seconds.
    signature_max_age: float = 300.0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MqttSettings:
        """Parse ``mqtt://[user:password@]host[:port]`` or ``mqtts://…``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigurationError(f"cascade_mqtt_url: scheme must be mqtt or mqtts, got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"cascade_mqtt_url: bad port ({exc})") from None
        if port == 0:
            raise ConfigurationError("cascade_mqtt_url: bad port (0)")
        if not parts.hostname:
            raise ConfigurationError("cascade_mqtt_url: missing host")
        if parts.password and not parts.username:
            # MQTT sends a password only with a user name (MQTT 3.1.1, 3.1.2.9).
            raise ConfigurationError("cascade_mqtt_url: a password needs a user name")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=(8883 if tls else 1883) if port is None else port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            **options,
        )

    def signer(self) -> Signer | None:
        """Signs and verifies payloads when a secret is set."""
        return None if self.secret is None else Signer(self.secret, self.signature_max_age)

    def redacted_url(self) -> str:
        """The URL without its password, for logs."""
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class CascadeConfig:
    """The parsed ``cascade_*`` settings of one app."""

    redis_url: str = field(repr=False)  # may hold a password
    redis_prefix: str = "cascade"
    mqtt_url: str | None = field(default=None, repr=False)
    mqtt_prefix: str = "cascade"
    lease_seconds: float = 30.0
    sweep_interval: float = 1.0
    redis_retry_delay: float = 1.0
    redis_retry_max_delay: float = 30.0
    max_handoffs: int = 500
    handoff_queues: bool = True
    direct_handoff: bool = True
    mqtt: MqttSettings | None = None
    #: Connection and Sentinel options (redis_client.py); may hold a password.
    redis_transport_options: dict[str, Any] = field(default_factory=dict, repr=False, hash=False)
    #: Replicas a parking waits for (WAIT); None: 1 when the master reports replicas.
    redis_wait_replicas: int | None = None
    redis_wait_timeout: float = 0.5

    @classmethod
    def from_app(cls, app: Celery) -> CascadeConfig:
        """Read and check ``app.conf``; raise ConfigurationError naming the bad setting."""
        conf = app.conf
        own_url = conf.get("cascade_redis_url")
        redis_url = own_url or _redis_broker_url(conf.get("broker_url"))
        if not redis_url:
            raise ConfigurationError(
                "cascade_redis_url is not set and broker_url is not a redis:// URL"
            )
        redis_url = _url(conf, "cascade_redis_url", redis_url, SCHEMES)
        options = conf.get("cascade_redis_transport_options")
        if options is None and not own_url:  # the broker's Redis: its options too
            options = sentinel_part(conf.get("broker_transport_options") or {})
        return cls(
            redis_url=redis_url,
            redis_transport_options=check_transport_options(redis_url, options),
            redis_wait_replicas=_wait_replicas(conf),
            redis_wait_timeout=_seconds(conf, "cascade_redis_wait_timeout", 0.5, minimum=0.001),
            redis_prefix=_prefix(conf, "cascade_redis_prefix"),
            mqtt_url=_optional_url(conf, "cascade_mqtt_url", ("mqtt", "mqtts")),
            mqtt_prefix=_prefix(conf, "cascade_mqtt_prefix"),
            lease_seconds=_seconds(conf, "cascade_lease_seconds", 30.0, minimum=0.1),
            sweep_interval=_seconds(conf, "cascade_sweep_interval", 1.0, minimum=0.01),
            redis_retry_delay=_seconds(conf, "cascade_redis_retry_delay", 1.0, minimum=0.01),
            redis_retry_max_delay=_seconds(
                conf, "cascade_redis_retry_max_delay", 30.0, minimum=0.01
            ),
            max_handoffs=_positive_int(conf, "cascade_max_handoffs", 500),
            handoff_queues=_flag(conf, "cascade_handoff_queues", default=True),
            direct_handoff=_flag(conf, "cascade_direct_handoff", default=True),
            mqtt=_mqtt(conf),
        )


def _redis_broker_url(broker_url: object) -> str | None:
    if isinstance(broker_url, str) and broker_url.split("://", 1)[0] in (
        "redis", "rediss", "sentinel",
    ):  # fmt: skip
        return broker_url
    return None


def _wait_replicas(conf: Any) -> int | None:
    value = conf.get("cascade_redis_wait_replicas")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigurationError(
            f"cascade_redis_wait_replicas must be None (auto), 0 (off) or an integer >= 1, "
            f"got {value!r}"
        )
    return value


def _url(conf: Any, name: str, value: object, schemes: tuple[str, ...]) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ConfigurationError(f"{name} must be a URL string, got {value!r}")
    scheme = value.split("://", 1)[0]
    if scheme not in schemes:
        raise ConfigurationError(f"{name}: scheme {scheme!r} is not one of {', '.join(schemes)}")
    return value


def _optional_url(conf: Any, name: str, schemes: tuple[str, ...]) -> str | None:
    value = conf.get(name)
    return None if value is None else _url(conf, name, value, schemes)


def _prefix(conf: Any, name: str) -> str:
    value = conf.get(name, "cascade")
    if value is None:
        value = "cascade"
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise ConfigurationError(f"{name} must match [A-Za-z0-9._-]{{1,64}}, got {value!r}")
    return value


def _seconds(conf: Any, name: str, default: float, *, minimum: float) -> float:
    value = conf.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum} seconds, got {value!r}")
    return float(value)


def _positive_int(conf: Any, name: str, default: int) -> int:
    value = conf.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _flag(conf: Any, name: str, *, default: bool) -> bool:
    value = conf.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _mqtt(conf: Any) -> MqttSettings | None:
    url = conf.get("cascade_mqtt_url")
    if url is None:
        return None
    if not isinstance(url, str):
        raise ConfigurationError(f"cascade_mqtt_url must be a URL string, got {url!r}")
    files = {}
    for option in ("ca_certs", "certfile", "keyfile"):
        value = conf.get(f"cascade_mqtt_{option}")
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"cascade_mqtt_{option} must be a file path, got {value!r}")
        files[option] = value
    if (files["certfile"] is None) != (files["keyfile"] is None):
        raise ConfigurationError("cascade_mqtt_certfile and cascade_mqtt_keyfile go together")
    keepalive = conf.get("cascade_mqtt_keepalive", 30)
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 5 <= keepalive <= 3600:
        raise ConfigurationError(
            f"cascade_mqtt_keepalive must be an integer 5..3600, got {keepalive!r}"
        )
    secret = conf.get("cascade_mqtt_secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH):
        raise ConfigurationError(
            f"cascade_mqtt_secret must be a string of at least {MIN_SECRET_LENGTH} characters"
        )
    return MqttSettings.from_url(
        url,
        keepalive=keepalive,
        connect_timeout=_seconds(conf, "cascade_mqtt_connect_timeout", 10.0, minimum=0.1),
        secret=secret,
        signature_max_age=_seconds(conf, "cascade_mqtt_signature_max_age", 300.0, minimum=1.0),
        **files,
    )


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs (each entry
    of a ``;``-separated Sentinel list)."""
    if ";" in url:
        return ";".join(redact_url(entry) for entry in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
