"""The one factory for every Redis connection cascade makes.

``cascade_redis_url`` takes what Celery users write for their broker: ``redis://``,
``rediss://``, ``unix://``, or Sentinel as ``sentinel://h1:26379;sentinel://h2:26379``
with ``cascade_redis_transport_options = {"master_name": "mymaster", ...}``. A Sentinel
client asks the sentinels for the master on every new connection, so it follows a
failover by itself (redis-py's ``Sentinel.master_for``). A Redis Cluster is
``redis+cluster://h1:7000,h2:7001`` (redis_cluster.py): its client is redis-py's
``RedisCluster``, typed here as ``redis.Redis`` (it offers the commands cascade uses).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from cascade_celery import redis_cluster
from cascade_celery.errors import CascadeError, ConfigurationError
from cascade_celery.redis_cluster import (
    ClusterUnavailable,
    check_cluster_options,
    cluster_client,
    is_cluster_url,
    node_client,
)

if TYPE_CHECKING:
    from cascade_celery.config import CascadeConfig

SCHEMES = ("redis", "rediss", "unix", "sentinel", *redis_cluster.SCHEMES)
#: What a worker process's client uses unless the transport options say otherwise.
RUNTIME_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5.0, "socket_connect_timeout": 2.0, "health_check_interval": 15,
}  # fmt: skip
#: Transport options that only Sentinel takes.
SENTINEL_OPTIONS = frozenset({"master_name", "sentinel_kwargs", "min_other_sentinels"})
#: Transport options passed on to every connection to Redis (the master, with Sentinel).
CONNECTION_OPTIONS = frozenset({
    "db", "username", "password", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "socket_keepalive_options", "health_check_interval",
    "retry_on_timeout", "client_name", "max_connections", "ssl", "ssl_ca_certs",
    "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
})  # fmt: skip


@dataclass(frozen=True)
class SentinelUrl:
    """``sentinel://[user:password@]host:port[/db]`` entries joined by ``;``: the
    sentinels' addresses, and the master's db and credentials (as kombu reads them)."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Parse the ``;``-separated list; raise ConfigurationError naming what is wrong."""
        sentinels: list[tuple[str, int]] = []
        db, username, password = 0, None, None
        for entry in (part.strip() for part in url.split(";")):
            parts = urlsplit(entry)
            if parts.scheme != "sentinel":
                raise ConfigurationError(
                    f"cascade_redis_url: every entry of a Sentinel list is sentinel://host:port, "
                    f"got {entry!r}"
                )
            try:
                port = parts.port or 26379
            except ValueError as exc:
                raise ConfigurationError(f"cascade_redis_url: bad port ({exc})") from None
            if not parts.hostname:
                raise ConfigurationError(f"cascade_redis_url: missing host in {entry!r}")
            sentinels.append((parts.hostname, port))
            path = parts.path.strip("/")
            if path:
                if not path.isdigit():
                    raise ConfigurationError(f"cascade_redis_url: bad db {path!r}")
                db = int(path)
            username = unquote(parts.username) if parts.username else username
            password = unquote(parts.password) if parts.password else password
        return cls(tuple(sentinels), db, username, password)


def check_transport_options(url: str, options: object) -> dict[str, Any]:
    """``cascade_redis_transport_options`` checked against ``url``'s scheme (a copy)."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigurationError(f"cascade_redis_transport_options must be a dict, got {options!r}")
    checked = dict(options)
    unknown = sorted(set(checked) - SENTINEL_OPTIONS - CONNECTION_OPTIONS)
    if unknown:
        known = ", ".join(sorted(SENTINEL_OPTIONS | CONNECTION_OPTIONS))
        raise ConfigurationError(
            f"cascade_redis_transport_options: unknown option(s) {', '.join(unknown)} "
            f"(known: {known})"
        )
    sentinel = url.split("://", 1)[0] == "sentinel"
    if not sentinel and ";" in url:
        raise ConfigurationError("cascade_redis_url: only sentinel:// URLs form a ;-separated list")
    if not sentinel:
        given = sorted(set(checked) & SENTINEL_OPTIONS)
        if given:
            raise ConfigurationError(
                f"cascade_redis_transport_options: {', '.join(given)} only apply to a "
                f"sentinel:// cascade_redis_url"
            )
        if is_cluster_url(url):
            check_cluster_options(url, checked)
        return checked
    SentinelUrl.parse(url)
    master = checked.get("master_name")
    if not isinstance(master, str) or not master:
        raise ConfigurationError(
            "cascade_redis_transport_options must name the Sentinel master: "
            '{"master_name": "mymaster"} (as in broker_transport_options)'
        )
    if not isinstance(checked.get("sentinel_kwargs", {}), Mapping):
        raise ConfigurationError("cascade_redis_transport_options: sentinel_kwargs must be a dict")
    db = checked.get("db", 0)
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise ConfigurationError(f"cascade_redis_transport_options: bad db {db!r}")
    return checked


def sentinel_part(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``broker_transport_options`` this factory knows (the rest is kombu's)."""
    return {k: v for k, v in options.items() if k in SENTINEL_OPTIONS | CONNECTION_OPTIONS}


def redis_client(
    url: str, transport_options: Mapping[str, Any] | None = None, **defaults: Any
) -> redis.Redis:
    """A client of ``url``: ``defaults`` (e.g. :data:`RUNTIME_OPTIONS`) are overridden by
    the transport options; with Sentinel, a client of the master that follows failovers;
    with a cluster, redis-py's cluster client."""
    options = dict(transport_options or {})
    if is_cluster_url(url):
        return cast(redis.Redis, cluster_client(url, options, defaults))
    if url.split("://", 1)[0] != "sentinel":
        return redis.Redis.from_url(url, **{**defaults, **options})
    parsed = SentinelUrl.parse(url)
    master = options.pop("master_name")
    min_other = options.pop("min_other_sentinels", 0)
    sockets = {k: v for k, v in defaults.items() if k.startswith("socket_")}
    sentinel_kwargs = {**sockets, **options.pop("sentinel_kwargs", {})}
    credentials = {"username": parsed.username, "password": parsed.password, "db": parsed.db}
    connection = {**defaults, **{k: v for k, v in credentials.items() if v is not None}}
    connection.update(options)
    sentinel = Sentinel(
        list(parsed.sentinels), min_other_sentinels=min_other, sentinel_kwargs=sentinel_kwargs
    )
    client: redis.Redis = sentinel.master_for(master, redis_class=_SentinelMaster, **connection)
    return client


class _SentinelMaster(redis.Redis):
    """The master's client; closing it closes the connections to the sentinels too."""

    def close(self) -> None:
        """Close the master's connections and the sentinels' clients."""
        super().close()
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            pool.sentinel_manager.close()


def client_for(config: CascadeConfig, **defaults: Any) -> redis.Redis:
    """A client of cascade's Redis as ``config`` describes it."""
    return redis_client(config.redis_url, config.redis_transport_options, **defaults)


class NotReplicated(CascadeError, redis.exceptions.ConnectionError):
    """No replica acknowledged a parking in time: the runtime treats it as Redis down
    (``errors.REDIS_DOWN``) and sends the task back to the broker with back-off."""


class ReplicaWait:
    """``WAIT`` for replicas after a write that must survive a failover (a parking).

    ``replicas``: how many must acknowledge; None: 1 while the master reports connected
    replicas (``INFO replication``, read at most every ``INFO_TTL`` seconds), 0: never wait.
    WAIT covers the writes of its own connection, and the pool may lend another one than
    the write's: so a marker (a hash field, expiring) is written first on WAIT's
    connection. The replication stream is ordered: a server holding the marker holds the
    earlier write too. On a cluster, the marker's key picks the master (and its replicas)
    that WAIT asks: give it the slot of the write it stands for.
    """

    INFO_TTL = 2.0
    MARKER_TTL_MS = 60_000

    def __init__(self, client: redis.Redis, replicas: int | None, timeout: float) -> None:
        self.client = client
        self.replicas = replicas
        self.timeout_ms = max(1, round(timeout * 1000))
        #: Per master (its client's id): (monotonic time read, connected replicas).
        self._known: dict[int, tuple[float, int]] = {}

    def needed(self, master: redis.Redis | None = None) -> int:
        """How many replicas a write (on ``master``, default the client's) waits for now."""
        if self.replicas is not None:
            return self.replicas
        master = master or self.client
        now = time.monotonic()
        known = self._known.get(id(master))
        if known is None or now - known[0] > self.INFO_TTL:
            connected = int(master.info("replication").get("connected_slaves", 0))
            known = self._known[id(master)] = (now, connected)
        return min(1, known[1])

    def wait(self, marker: str, field: str, value: str) -> bool:
        """Write ``field`` = ``value`` in the hash ``marker`` and wait until the replicas
        needed hold it (and every write before it); True also when none are needed."""
        master = node_client(self.client, marker)
        try:
            needed = self.needed(master)
            if needed == 0:
                return True
            pipe = master.pipeline(transaction=False)
            pipe.hset(marker, field, value)
            pipe.pexpire(marker, self.MARKER_TTL_MS)
            pipe.execute_command("WAIT", needed, self.timeout_ms)
            *_, acknowledged = pipe.execute()
        except (redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError) as exc:  # fmt: skip
            # A cluster's slot moved (a failover) since the client mapped it.
            raise ClusterUnavailable(f"Redis Cluster: {exc}") from exc
        if int(acknowledged) >= needed:
            return True
        self._known.pop(id(master), None)  # a replica may be gone: ask again next time
        return False
