"""Redis Cluster as cascade's Redis: ``redis+cluster://h1:7000,h2:7001`` (``rediss+cluster``
for TLS), a comma-separated list of seed nodes (any live one finds the rest).

The client is redis-py's ``RedisCluster`` with two changes: errors that mean "this slot
can't be served right now" (``CLUSTERDOWN``, ``TRYAGAIN``, a slot no node covers, as
during a failover) are raised as :class:`ClusterUnavailable`, a ``ConnectionError``,
so the runtime treats them as Redis down (the task goes back to the broker with
back-off); and a pipeline may ask for ``TIME`` (any node answers).

A Lua script may only touch keys of one hash slot: see ``pools/cross_slot.py`` for
tasks whose pools live in several.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis
from redis.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, NodesManager, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from cascade_celery.errors import CascadeError, ConfigurationError

SCHEMES = ("redis+cluster", "rediss+cluster")
#: Errors of a cluster that cannot serve a slot for now (a failover, a partition).
_UNAVAILABLE = (ClusterDownError, TryAgainError, SlotNotCoveredError, MovedError)


class ClusterUnavailable(CascadeError, redis.exceptions.ConnectionError):
    """The cluster cannot serve a slot right now (``errors.REDIS_DOWN`` for the runtime)."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.split("://", 1)[0] in SCHEMES


@dataclass(frozen=True)
class ClusterUrl:
    """``redis+cluster://[user:password@]host:port,host:port[/0]``: seed nodes, TLS and
    credentials (every node takes the same)."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        """Parse the URL; raise ConfigurationError naming what is wrong."""
        scheme, _, rest = url.partition("://")
        if scheme not in SCHEMES:
            raise ConfigurationError(f"cascade_redis_url: not a cluster URL: {scheme}://…")
        if "?" in rest or "#" in rest:
            raise ConfigurationError(
                "cascade_redis_url: a cluster URL takes no query; put options in "
                "cascade_redis_transport_options"
            )
        netloc, _, path = rest.partition("/")
        if path.strip("/") not in ("", "0"):
            raise ConfigurationError(
                f"cascade_redis_url: Redis Cluster has only db 0, got /{path.strip('/')}"
            )
        credentials, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = credentials.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        nodes = tuple(_node(entry) for entry in hosts.split(","))
        return cls(nodes, scheme == "rediss+cluster", username, password)


def _node(entry: str) -> tuple[str, int]:
    host, colon, port = entry.strip().rpartition(":")
    if not colon:
        host, port = port, "6379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"cascade_redis_url: bad cluster node {entry!r} (host:port)")
    return host, int(port)


def check_cluster_options(url: str, options: Mapping[str, Any]) -> None:
    """A cluster URL's own checks of the transport options (the factory checks the rest)."""
    ClusterUrl.parse(url)
    db = options.get("db", 0)
    if db != 0 or isinstance(db, bool):
        raise ConfigurationError(f"cascade_redis_transport_options: Redis Cluster has only db 0, "
                                 f"got {db!r}")  # fmt: skip


def cluster_client(url: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> Cluster:
    """A client of the cluster ``url`` seeds; ``options`` override ``defaults``."""
    parsed = ClusterUrl.parse(url)
    settings = {**defaults, **options}
    settings.pop("db", None)
    if parsed.tls:
        settings.setdefault("ssl", True)
    for name in ("username", "password"):
        if getattr(parsed, name) is not None:
            settings.setdefault(name, getattr(parsed, name))
    seeds = [ClusterNode(host, port) for host, port in parsed.nodes]
    return Cluster(startup_nodes=seeds, **settings)


class Cluster(RedisCluster):
    """redis-py's cluster client, built at its first use, raising
    :class:`ClusterUnavailable` for a slot that can't be served now.

    redis-py's asks the seeds for the slots map when it is built; this one waits for its
    first command, so a process that starts while the cluster is down (or before it
    formed) builds its client anyway, and its first calls raise ClusterUnavailable
    (Redis down, for the runtime) until the cluster answers, as a lone Redis would.
    """

    _settings: dict[str, Any]
    _building: threading.RLock
    _built: bool

    def __init__(self, **settings: Any) -> None:  # redis-py's __init__ runs at first use
        self.__dict__.update(_settings=settings, _building=threading.RLock(), _built=False)

    def __getattr__(self, name: str) -> Any:
        # Only for attributes redis-py's __init__ sets: build the client, then look again.
        if name.startswith("__") or self.__dict__.get("_built") or self.__dict__.get("_in_init"):
            raise AttributeError(name)
        self._build()
        return getattr(self, name)

    def _build(self) -> None:
        with self._building:
            if self._built:
                return
            self.__dict__["_in_init"] = True
            try:
                super().__init__(**self._settings)
            except RedisClusterException as exc:
                raise ClusterUnavailable(f"Redis Cluster: {exc}") from exc
            finally:
                self.__dict__["_in_init"] = False
            self.nodes_manager.__class__ = _Nodes  # built by redis-py; see _Nodes
            self._built = True

    def close(self) -> None:
        """Close every node's connections (nothing to close if never used)."""
        if self.__dict__.get("_built"):
            super().close()

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """As redis-py's, with the errors of an unavailable slot made ClusterUnavailable."""
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except _UNAVAILABLE as exc:
            raise ClusterUnavailable(f"Redis Cluster: {exc}") from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        """redis-py's cluster pipeline, that may also ask for ``TIME``."""
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = _Pipeline  # built by redis-py, given the two methods below
        return pipe

    def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        """redis-py's cluster pub/sub, refreshing the slots map when its node is gone."""
        return _PubSub(self, node=node, host=host, port=port, **kwargs)

    def node_client(self, key: str) -> redis.Redis:
        """A client of the master serving ``key``'s slot now (its connection pool)."""
        node = self.get_node_from_key(key)  # type: ignore[no-untyped-call]
        if node is None:
            raise ClusterUnavailable(f"Redis Cluster: no node serves the slot of {key!r}")
        client: redis.Redis = self.get_redis_connection(node)
        return client


class _PubSub(ClusterPubSub):
    """A cluster pub/sub whose failed subscribe refreshes the slots map: redis-py picks
    the node serving the first channel's slot from that map, and a subscriber whose
    node failed over would otherwise retry the dead node until a command refreshed it."""

    def execute_command(self, *args: Any) -> Any:
        try:
            return super().execute_command(*args)  # type: ignore[no-untyped-call]
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            with contextlib.suppress(redis.exceptions.RedisError):  # a failover under way
                self.cluster.nodes_manager.initialize()
            raise


class _Nodes(NodesManager):
    """redis-py's slots map, whose refresh failing (no seed reachable, slots not all
    covered: a failover under way) raises ClusterUnavailable."""

    def initialize(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(f"Redis Cluster: {exc}") from exc


class _Pipeline(ClusterPipeline):
    def time(self, **kwargs: Any) -> Any:
        """``TIME`` of any node (redis-py blocks it in cluster pipelines)."""
        return self.execute_command("TIME", **kwargs)  # type: ignore[no-untyped-call]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except _UNAVAILABLE as exc:
            raise ClusterUnavailable(f"Redis Cluster: {exc}") from exc


def is_cluster(client: redis.Redis) -> bool:
    """Whether ``client`` is a Redis Cluster's."""
    return isinstance(client, RedisCluster)


def slot_of(client: redis.Redis, key: str) -> int:
    """The hash slot of ``key`` (0 on a single Redis: one slot for everything)."""
    return int(client.keyslot(key)) if isinstance(client, RedisCluster) else 0


def node_client(client: redis.Redis, key: str) -> redis.Redis:
    """The client that reaches the master holding ``key``: ``client`` itself unless it
    is a cluster's."""
    return client.node_client(key) if isinstance(client, Cluster) else client
