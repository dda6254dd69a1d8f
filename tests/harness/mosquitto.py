"""A real ``mosquitto`` broker on a free port, for tests: start, stop, crash and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.harness.managed import Managed
from tests.harness.redis_server import find_binary
from tests.harness.waiting import free_port, port_open, wait_for


class MosquittoServer(Managed):
    """A ``mosquitto`` with one anonymous listener on 127.0.0.1, its files in ``directory``.

    Persistence is on: retained messages survive ``stop()``/``restart()`` (mosquitto saves
    on a clean shutdown; ``kill()`` is a crash and loses what was not saved yet).

    To add listeners (a password-file one, a TLS one), override ``extra_listeners()`` to
    return more ``listener ...`` blocks; ``per_listener_settings true`` keeps each block's
    authentication options to itself.
    """

    def __init__(self, directory: Path | str, *, start_timeout: float = 10.0) -> None:
        self.binary = find_binary("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.port = 0
        self.config_file = self.directory / "mosquitto.conf"
        self.logfile = self.directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self, port: int) -> str:
        """The full configuration text for a server listening on ``port``."""
        general = [
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.logfile}",
            "max_queued_messages 0",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            general.append("user root")  # else it drops to user "mosquitto": no access to dir
        main_listener = [f"listener {port} 127.0.0.1", "allow_anonymous true"]
        blocks = ["\n".join(general), "\n".join(main_listener), *self.extra_listeners()]
        return "\n\n".join(blocks) + "\n"

    def extra_listeners(self) -> list[str]:
        """More listener blocks (e.g. ``password_file``, TLS); none by default."""
        return []

    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> MosquittoServer:
        """Start the broker (on a new free port the first time) and wait until MQTT works."""
        if self.is_running():
            return self
        attempts = 1 if self.port else 3  # a free port can be taken before we bind it
        for attempt in range(attempts):
            port = self.port or free_port()
            self.config_file.write_text(self.config(port))
            command = [self.binary, "-c", str(self.config_file)]
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
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
        """SIGTERM (saves retained messages) and wait; SIGKILL after ``timeout``."""
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
        """SIGKILL and wait: a crash."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self) -> MosquittoServer:
        """Stop if running, then start again on the same port and directory."""
        self.stop()
        return self.start()

    def log_text(self) -> str:
        """The broker's log so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def _wait_ready(self, port: int) -> None:
        """Wait until the port accepts TCP and an MQTT client gets a CONNACK."""

        def listening() -> bool:
            if not self.is_running():
                raise AssertionError(f"mosquitto on port {port} exited:\n{self.log_text()}")
            return port_open(port)

        wait_for(listening, self.start_timeout, message=f"mosquitto to listen on port {port}")
        wait_for(
            lambda: mqtt_handshake(port),
            self.start_timeout,
            interval=0.05,
            message=f"an MQTT CONNACK from mosquitto on port {port}",
        )

    def __repr__(self) -> str:
        return f"MosquittoServer(port={self.port}, dir={self.directory})"


def mqtt_handshake(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Whether a paho client gets a CONNACK from ``host:port`` within ``timeout``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    try:
        client.connect(host, port, keepalive=5)
        deadline = time.monotonic() + timeout
        while not client.is_connected() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return False
        return client.is_connected()
    except OSError:
        return False
    finally:
        client.disconnect()  # sends DISCONNECT if connected, and closes the socket
