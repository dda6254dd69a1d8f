"""A real Sentinel deployment on free ports, for tests: a master, one replica and three
sentinels (``redis-server sentinel.conf --sentinel``), each in its own directory.

Failover settings are quick (down after 1 s, failover timeout 3 s): after
``kill_master()`` (SIGKILL) the sentinels promote the replica within a few seconds.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.harness.managed import Managed
from tests.harness.redis_server import RedisServer, find_binary
from tests.harness.waiting import free_port, wait_for

MASTER_NAME = "mymaster"


class ReplicaServer(RedisServer):
    """A ``RedisServer`` that replicates ``master_port`` (``--replicaof``)."""

    def __init__(self, directory: Path | str, master_port: int, **options: Any) -> None:
        super().__init__(directory, **options)
        self.master_port = master_port

    def _command(self, port: int) -> list[str]:
        return [*super()._command(port), "--replicaof", "127.0.0.1", str(self.master_port)]

    def pause(self) -> None:
        """SIGSTOP: the replica stays connected but acknowledges nothing."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)


class SentinelProcess:
    """One ``redis-server --sentinel`` watching ``master_port`` under ``MASTER_NAME``."""

    def __init__(self, directory: Path, master_port: int, quorum: int) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.master_port = master_port
        self.quorum = quorum
        self.port = 0
        self.logfile = directory / "sentinel.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        """Start on a free port (retried if it was taken) and wait until it answers."""
        for attempt in range(3):
            port = free_port()
            conf = self.directory / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\nlogfile {self.logfile}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 3000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            binary = find_binary("redis-server", "/usr/bin/redis-server")
            self._process = subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL
            )
            self.port = port
            try:
                wait_for(self._answers, 10, message=f"sentinel on port {port}")
                return self
            except AssertionError:
                self.kill()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _answers(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise AssertionError(f"sentinel exited:\n{log}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        """A client of this sentinel (decoded replies)."""
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def kill(self) -> None:
        """SIGKILL and wait."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None


class SentinelDeployment(Managed):
    """Master + replica + three sentinels (quorum 2) under ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.master = RedisServer(self.directory / "master")
        self.replica: ReplicaServer | None = None
        self.sentinels: list[SentinelProcess] = []
        self._killed: list[RedisServer] = []

    def start(self) -> SentinelDeployment:
        """Start everything; return once the sentinels know the replica and each other."""
        self.master.start()
        self.replica = ReplicaServer(self.directory / "replica", self.master.port).start()
        wait_for(self._replica_synced, 10, message="the replica to sync")
        self.sentinels = [
            SentinelProcess(self.directory / f"sentinel-{i}", self.master.port, 2).start()
            for i in range(3)
        ]
        wait_for(self._sentinels_ready, 20, message="the sentinels to know each other")
        return self

    def url(self, db: int = 0) -> str:
        """``sentinel://127.0.0.1:<p1>/<db>;sentinel://…`` as users write it."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    @property
    def options(self) -> dict[str, Any]:
        """``cascade_redis_transport_options`` for this deployment."""
        return {"master_name": MASTER_NAME}

    def master_port(self) -> int:
        """The master's port as the first live sentinel reports it."""
        for sentinel in self.sentinels:
            port = self.master_port_of(sentinel)
            if port is not None:
                return port
        raise AssertionError("no sentinel answers")

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; return it (its data stays in its directory)."""
        port = self.master_port()
        server = next(s for s in (self.master, self.replica) if s and s.port == port)
        server.kill()
        self._killed.append(server)
        return server

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a new master and it serves; return its port."""

        def promoted() -> int | None:
            ports = {self.master_port_of(s) for s in self.sentinels}
            if len(ports) != 1 or old_port in ports or None in ports:
                return None
            (port,) = ports
            assert port is not None
            with redis.Redis(port=port, socket_timeout=2) as client:
                role = client.info("replication")["role"]
            return port if role == "master" else None

        return wait_for(promoted, timeout, interval=0.1, message="the sentinels' failover")

    @staticmethod
    def master_port_of(sentinel: SentinelProcess) -> int | None:
        """What one sentinel names as the master's port (None: it does not answer)."""
        try:
            with sentinel.client() as client:
                _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            return int(port)
        except redis.ConnectionError:
            return None

    def _replica_synced(self) -> bool:
        info = self.master.client().info("replication")
        return int(info["connected_slaves"]) == 1 and info["slave0"]["state"] == "online"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(MASTER_NAME)
            if int(master["num-other-sentinels"]) != 2 or int(master["num-slaves"]) != 1:
                return False
        return True

    def stop(self) -> None:
        """Kill the sentinels, stop the servers."""
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in (self.master, self.replica):
            if server is not None:
                server.__exit__(None, None, None)
