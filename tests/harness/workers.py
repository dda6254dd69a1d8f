"""Real Celery workers for tests: ``celery worker`` subprocesses and in-process threads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import WorkController

from tests.harness.managed import Managed
from tests.harness.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess(Managed):
    """``celery -A <app_module> worker`` in its own process group, logging to ``log_dir``.

    ``start()`` returns once the worker logged "<hostname> ready."; ``stop()`` is a warm
    shutdown; ``kill()`` SIGKILLs the main process and its pool children at once.
    """

    def __init__(
        self,
        app_module: str,
        *,
        log_dir: Path | str,
        pool: str = "prefork",
        concurrency: int = 1,
        queues: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "worker",
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.app_module = app_module
        self.pool = pool
        self.concurrency = concurrency
        self.queues = list(queues)
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name)
        self.nodename = f"{safe}-{uuid.uuid4().hex[:8]}"
        self.hostname = f"{self.nodename}@%h"
        self.log_path = Path(log_dir) / f"{self.nodename}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The pid of the worker's main process (also its process group id)."""
        if self._process is None:
            raise RuntimeError("worker not started")
        return self._process.pid

    def command(self) -> list[str]:
        """The ``celery worker`` command line."""
        command = [sys.executable, "-m", "celery", "-A", self.app_module, "worker"]
        command += ["-P", self.pool, "-c", str(self.concurrency), "--hostname", self.hostname]
        command += ["-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.queues:
            command += ["-Q", ",".join(self.queues)]
        return command + self.extra_args

    def start(self) -> WorkerProcess:
        """Start the worker and wait until it logs that it is ready to consume."""
        if self.is_running():
            return self
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        try:
            wait_for(self._ready, self.start_timeout, interval=0.05, message=f"{self} ready")
        except BaseException:
            self.kill()
            raise
        return self

    def is_running(self) -> bool:
        """Whether the main process is alive."""
        return self._process is not None and self._exited() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM) and wait; SIGKILL the whole group after ``timeout``."""
        if self._process is None:
            return
        if self._exited() is None:
            self._signal_main(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._exited() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the main process and every child in its group, and reap the main one."""
        if self._process is None:
            return
        # The main process is not reaped yet (at worst a zombie), so its pid, which is the
        # group id, cannot have been reused: the group kill hits only our processes.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def child_pids(self) -> list[int]:
        """Pids of the main process's children (the prefork pool processes), sorted."""
        if not self.is_running():
            return []
        pids: set[int] = set()
        for children in Path(f"/proc/{self.pid}/task").glob("*/children"):
            try:
                pids.update(int(pid) for pid in children.read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while we listed them
        return sorted(pids)

    def kill_child(self, pid: int) -> None:
        """SIGKILL one pool child (it must be a child of this worker)."""
        if pid not in self.child_pids():
            raise ValueError(f"{pid} is not a child of {self}")
        os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        """Everything the worker printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return f"WorkerProcess({self.app_module!r}, {self.nodename}, -P {self.pool})"

    def _ready(self) -> bool:
        if self._exited() is not None:
            raise AssertionError(f"{self} exited before it was ready:\n{self.log_text()}")
        return re.search(rf"{re.escape(self.nodename)}@\S+ ready\.", self.log_text()) is not None

    def _exited(self) -> int | None:
        """The main process's exit status if it exited, without reaping it (else None)."""
        assert self._process is not None
        if self._process.returncode is not None:
            return self._process.returncode
        result = os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return None if result is None else result.si_status

    def _signal_main(self, signum: int) -> None:
        assert self._process is not None
        with suppress(ProcessLookupError):
            os.kill(self._process.pid, signum)


@contextmanager
def embedded_worker(
    app: Celery,
    pool: str = "solo",
    concurrency: int = 1,
    *,
    shutdown_timeout: float = 10.0,
    **kwargs: Any,
) -> Iterator[WorkController]:
    """A worker for ``app`` in a thread of this process (pool ``solo`` or ``threads``).

    Returns once the consumer is ready. Extra ``kwargs`` go to ``WorkController``
    (e.g. ``queues=[...]``, ``hostname=...``).
    """
    if pool not in ("solo", "threads"):
        raise ValueError(f"embedded workers support the solo and threads pools, not {pool!r}")
    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=shutdown_timeout,
        **kwargs,
    ) as worker:
        yield worker
