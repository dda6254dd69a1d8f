"""A real Redis Cluster on free ports, for tests: masters (and replicas) created with
``redis-cli --cluster create ... --cluster-yes``, each node in its own directory.

Every node gets two free ports (clients, and ``cluster-port`` for the cluster bus, so
nothing is derived as ``port + 10000``). ``cluster-node-timeout`` is short (1 s by
default): after :meth:`ClusterDeployment.kill_master_of` (SIGKILL) a replica of that
master takes over within a few seconds.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.harness.managed import Managed
from tests.harness.redis_server import RedisServer, find_binary
from tests.harness.waiting import free_port, wait_for

SLOTS = 16384


class ClusterServer(RedisServer):
    """A ``RedisServer`` in cluster mode, its bus on a port of its own."""

    def __init__(self, directory: Path | str, *, node_timeout_ms: int, **options: Any) -> None:
        super().__init__(directory, **options)
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = 0
        self._bus_of = 0  # the client port bus_port was chosen with

    def _command(self, port: int) -> list[str]:
        if port != self._bus_of:  # a new port (a retry after a clash): a new bus port too
            self.bus_port, self._bus_of = free_port(), port
        return [*super()._command(port), "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / "nodes.conf"),
                "--cluster-port", str(self.bus_port),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-replica-validity-factor", "0",  # any replica may take over
                "--cluster-require-full-coverage", "yes",
                "--repl-diskless-sync-delay", "0"]  # fmt: skip

    def pause(self) -> None:
        """SIGSTOP: the node stays connected but answers and acknowledges nothing."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def info_of(self, section: str) -> dict[str, Any]:
        """``INFO <section>`` of this node (a fresh connection)."""
        with redis.Redis(port=self.port, socket_timeout=2) as client:
            return dict(client.info(section))

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as this node sees it."""
        with redis.Redis(port=self.port, socket_timeout=2, decode_responses=True) as client:
            return {str(k): str(v) for k, v in client.cluster("INFO").items()}


class ClusterDeployment(Managed):
    """``masters`` masters, each with ``replicas`` replicas, under ``directory``."""

    def __init__(
        self,
        directory: Path | str,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        appendonly: bool = False,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.directory = Path(directory)
        self.replicas = replicas
        self.nodes = [
            ClusterServer(self.directory / f"node-{i}", node_timeout_ms=node_timeout_ms,
                          appendonly=appendonly)
            for i in range(masters * (1 + replicas))
        ]  # fmt: skip
        self._clients: list[RedisCluster] = []
        self._heirs: dict[int, list[ClusterServer]] = {}

    def start(self) -> ClusterDeployment:
        """Start every node, create the cluster, and return once every node sees all
        slots served, and each master its replicas online."""
        try:
            self._create()
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise
        return self

    def _create(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        cli = find_binary("redis-cli", "/usr/bin/redis-cli")
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if created.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{created.stdout}\n"
                                 f"{created.stderr}")  # fmt: skip
        wait_for(self._converged, 30, interval=0.05, message="the cluster to converge")

    def stop(self) -> None:
        """Close the clients handed out, stop every node."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        for node in self.nodes:
            node.__exit__(None, None, None)

    # -- addresses and clients ----------------------------------------------------------

    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,…`` (every node, as seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, **options: Any) -> RedisCluster:
        """A redis-py cluster client (closed when the deployment stops)."""
        live = [ClusterNode("127.0.0.1", n.port) for n in self.nodes if n.is_running()]
        client = RedisCluster(startup_nodes=live, socket_timeout=5, **options)
        self._clients.append(client)
        return client

    def live(self) -> list[ClusterServer]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.is_running()]

    def masters(self) -> list[ClusterServer]:
        """The live nodes that are masters now."""
        return [n for n in self.live() if n.info_of("replication")["role"] == "master"]

    def keyslot(self, key: str) -> int:
        """``key``'s hash slot."""
        return int(self._ask("CLUSTER KEYSLOT", key))

    def master_of(self, key: str) -> ClusterServer:
        """The live node that serves ``key``'s slot now (a fresh client asks)."""
        slot = self.keyslot(key)
        for node in self.live():
            with redis.Redis(port=node.port, socket_timeout=2) as client:
                for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def replicas_of(self, master: ClusterServer) -> list[ClusterServer]:
        """The live replicas of ``master`` (as it reports them)."""
        info = master.info_of("replication")
        ports = {int(info[f"slave{i}"]["port"]) for i in range(int(info["connected_slaves"]))}
        return [n for n in self.live() if n.port in ports]

    # -- failures -----------------------------------------------------------------------

    def kill_master_of(self, key: str) -> ClusterServer:
        """SIGKILL the master serving ``key`` (it must have a replica); return it."""
        master = self.master_of(key)
        replicas = self.replicas_of(master)
        if not replicas:
            raise AssertionError(f"the master on port {master.port} has no replica to promote")
        self._heirs[master.port] = replicas
        master.kill()
        return master

    def wait_failover(self, old: ClusterServer, timeout: float = 30.0) -> ClusterServer:
        """Wait until a replica of ``old`` (killed by :meth:`kill_master_of`) is a master,
        no live node maps a slot to ``old`` and all say the cluster is ok; return it."""

        def promoted() -> ClusterServer | None:
            try:
                heirs = [n for n in self._heirs[old.port]
                         if n.info_of("replication")["role"] == "master"]  # fmt: skip
                if not heirs or not self._converged(expected=len(self.live())):
                    return None
                for node in self.live():
                    with redis.Redis(port=node.port, socket_timeout=2) as client:
                        ranges = client.execute_command("CLUSTER SLOTS")
                    if any(int(master[1]) == old.port for _, _, master, *_ in ranges):
                        return None
            except (redis.ConnectionError, redis.TimeoutError):
                return None
            return heirs[0]

        return wait_for(promoted, timeout, interval=0.1, message="a replica to take over")

    # -- convergence ----------------------------------------------------------------------

    def _converged(self, expected: int | None = None) -> bool:
        """Every live node knows every live node, sees all slots ok, and every master
        has its replicas online."""
        live = self.live()
        try:
            for node in live:
                info = node.cluster_info()
                if info.get("cluster_state") != "ok":
                    return False
                if int(info["cluster_slots_ok"]) != SLOTS:
                    return False
                if expected is None and int(info["cluster_known_nodes"]) != len(self.nodes):
                    return False
            if expected is None:
                masters = self.masters()
                return all(
                    sum(1 for i in range(int(m.info_of("replication")["connected_slaves"]))
                        if m.info_of("replication")[f"slave{i}"]["state"] == "online")
                    == self.replicas
                    for m in masters
                )  # fmt: skip
        except (redis.ConnectionError, redis.TimeoutError, KeyError):
            return False
        return True

    def _ask(self, *command: Any) -> Any:
        node = self.live()[0]
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            return client.execute_command(*command)

    def __repr__(self) -> str:
        return f"ClusterDeployment(ports={[n.port for n in self.nodes]}, dir={self.directory})"


def names_on_distinct_masters(
    cluster: ClusterDeployment, names: Iterable[str], key_of: Callable[[str], str], count: int
) -> list[str]:
    """The first ``count`` of ``names`` whose keys (``key_of(name)``) lie on different
    masters, ordered by their keys' slots."""
    found: dict[int, tuple[int, str]] = {}
    for name in names:
        key = key_of(name)
        master = cluster.master_of(key).port
        if master not in found:
            found[master] = (int(cluster.keyslot(key)), name)
        if len(found) == count:
            return [name for _, name in sorted(found.values())]
    raise AssertionError(f"fewer than {count} masters serve these names")
