"""Polling with a deadline, and free TCP ports: the harness's only ways to wait and bind."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises ``AssertionError`` (with ``message`` and the timeout) if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message or predicate}")
        time.sleep(interval)


#: The ports :func:`free_port` hands out lie below the OS's ephemeral range (32768 and up
#: on Linux), so no client socket takes one meanwhile, and each pytest-xdist worker has a
#: slice of its own that it walks through: a server a test stops and restarts finds its
#: port still free, whatever the other workers start in between.
_PORTS = range(20_000, 32_000)
_next_port = itertools.count()


def _own_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = len(_PORTS) // count
    start = _PORTS.start + (int(worker) % count if worker.isdigit() else 0) * size
    return range(start, start + size)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, from this process's
    own slice, not handed out by this process before (until the slice wraps)."""
    ports = _own_ports()
    for _ in ports:
        port = ports[next(_next_port) % len(ports)]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {ports}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
