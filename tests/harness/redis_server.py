"""A real ``redis-server`` on a free port, for tests: start, stop, crash and restart it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from tests.harness.managed import Managed
from tests.harness.tls import Certificates
from tests.harness.waiting import free_port, wait_for

INSTALL_HINT = "install the test servers with: apt-get install redis-server mosquitto"


def find_binary(name: str, *fallbacks: str) -> str:
    """The path of ``name`` on PATH or at one of ``fallbacks``; a clear error if missing."""
    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found is None:
        raise RuntimeError(f"{name} not found on PATH or in {list(fallbacks)}; {INSTALL_HINT}")
    return found


class RedisServer(Managed):
    """A ``redis-server`` bound to 127.0.0.1 with its data and log in ``directory``.

    ``restart()`` reuses the port and directory, so with ``appendonly=True`` the data a
    ``kill()`` (SIGKILL, a crash) interrupted comes back; without AOF nothing is kept.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        appendonly: bool = False,
        start_timeout: float = 10.0,
        password: str | None = None,
        tls: Certificates | None = None,
    ) -> None:
        self.binary = find_binary("redis-server", "/usr/bin/redis-server")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        #: ``requirepass``: clients must authenticate.
        self.password = password
        #: Serve TLS only (``rediss://``), with these certificates.
        self.tls = tls
        self.start_timeout = start_timeout
        self.port = 0
        self.logfile = self.directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>`` (``rediss://:<password>@…?ssl_ca_certs=…``)."""
        auth = "" if self.password is None else f":{self.password}@"
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/{db}"
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.tls.ca}"

    def client(self, db: int = 0) -> redis.Redis:
        """A new client of this server (closed when the context manager exits)."""
        client = self._connect(self.port, db=db, socket_timeout=10)
        self._clients.append(client)
        return client

    def _connect(self, port: int, **options: Any) -> redis.Redis:
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, **options)

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server (on a new free port the first time) and wait until it serves."""
        if self.is_running():
            return self
        attempts = 1 if self.port else 3  # a free port can be taken before we bind it
        for attempt in range(attempts):
            port = self.port or free_port()
            self._process = subprocess.Popen(self._command(port), stdin=subprocess.DEVNULL)
            try:
                self._wait_ready(port)
            except AssertionError:
                self.kill()
                if attempt + 1 == attempts:
                    raise
                continue
            self.port = port
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown) and wait; SIGKILL if it takes longer than ``timeout``."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL and wait: a crash, nothing is flushed beyond what is already on disk."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self) -> RedisServer:
        """Stop if running, then start again on the same port and directory."""
        self.stop()
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.stop()

    def log_text(self) -> str:
        """The server's log so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def _command(self, port: int) -> list[str]:
        if self.tls is None:
            command = [self.binary, "--bind", "127.0.0.1", "--port", str(port)]
        else:
            command = [self.binary, "--bind", "127.0.0.1", "--port", "0",
                       "--tls-port", str(port), "--tls-cert-file", str(self.tls.server_cert),
                       "--tls-key-file", str(self.tls.server_key),
                       "--tls-ca-cert-file", str(self.tls.ca),
                       "--tls-auth-clients", "no"]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        command += ["--dir", str(self.directory), "--logfile", str(self.logfile)]
        command += ["--save", "", "--daemonize", "no"]
        command += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            command += ["--appendfsync", "always"]
        return command

    def _wait_ready(self, port: int) -> None:
        """Wait until PING answers and no dataset is loading; fail fast if the process died."""
        probe = self._connect(port, socket_timeout=1, socket_connect_timeout=1)

        def ready() -> bool:
            if not self.is_running():
                raise AssertionError(f"redis-server on port {port} exited:\n{self.log_text()}")
            try:
                return bool(probe.ping()) and not int(probe.info("persistence")["loading"])
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False

        try:
            wait_for(ready, self.start_timeout, message=f"redis-server to serve on port {port}")
        finally:
            probe.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, appendonly={self.appendonly}, dir={self.directory})"
