"""The one-command demo: ``python -m example_project.demo [--short]``.

It starts a private ``redis-server`` (unless ``--redis-url`` is given) and two prefork
workers, limits the partner task to 3 at once cluster-wide, sends orders, pauses the
partner task for a moment while orders keep arriving and resumes it, showing once per
half second how many partner calls run and how many wait parked in Redis. Then it
prints a summary and exits 0 only if the partner never saw more than 3 calls at once,
every order was processed exactly once and no call failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import redis
from celery.result import AsyncResult

from cascade_celery.pools.keys import pool_keys
from example_project.partner import IN_FLIGHT, Partner
from example_project.produce import PARTNER_SCOPE, Summary, order_ids, send_order

REPO_ROOT = Path(__file__).resolve().parents[1]
LIMIT = 3
LIMIT_POOL = f"constraint:concurrency:{PARTNER_SCOPE}"
PAUSE_POOL = f"constraint:pause:{PARTNER_SCOPE}"
INSTALL_HINT = (
    "redis-server is not installed. Install it with\n"
    "    apt-get install redis-server      (Debian, Ubuntu)\n"
    "    brew install redis                (macOS)\n"
    "or point the demo at a running Redis with --redis-url redis://host:6379/0"
)


class Abort(Exception):
    """The demo could not run (its message says why)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; raise Abort after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise Abort(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class Hurry:
    """While cleaning up, Ctrl-C (or SIGTERM) doesn't interrupt: it makes the rest quicker."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Hurry:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            print("\nstopping everything now (SIGKILL)", file=sys.stderr, flush=True)
        self.requested = True


class RedisServer:
    """A private ``redis-server`` on a free port, data and log in ``directory``."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start it and return its URL (database 0) once it answers PING."""
        for _ in range(3):  # a free port can be taken before redis binds it
            self.port = free_port()
            command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port)]
            command += ["--dir", str(self.directory), "--logfile", "redis.log"]
            command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            if self._wait_ready():
                return f"redis://127.0.0.1:{self.port}/0"
            self.stop()
        raise Abort(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        probe = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                with suppress(redis.ConnectionError, redis.TimeoutError):
                    if probe.ping():
                        return True
                time.sleep(0.05)
            return False
        finally:
            probe.close()

    def stop(self, hurry: Hurry | None = None) -> None:
        """SIGTERM and wait; SIGKILL after 10 s or when ``hurry`` is requested."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if hurry is not None and hurry.requested:
                    break
                time.sleep(0.02)
            if process.poll() is None:
                process.kill()
        process.wait()


class Worker:
    """``celery -A example_project.shop worker -P prefork -c 4`` in its own process group."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.nodename = f"{name}-{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the worker (without waiting for it)."""
        command = [sys.executable, "-m", "celery", "-A", "example_project.shop", "worker"]
        command += ["-P", "prefork", "-c", "4", "-n", f"{self.nodename}@%h", "-l", "INFO"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO_ROOT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the workers
        )

    def is_ready(self) -> bool:
        """Whether the worker logged "<node> ready."; raise Abort if it exited."""
        if self._exit_status() is not None:
            raise Abort(f"{self.name} exited before it was ready; see {self.log_path}")
        text = self.log_path.read_text(errors="replace")
        return f"{self.nodename}@" in text and " ready." in text

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the main process); don't wait."""
        if self.process is not None and self._exit_status() is None:
            with suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20.0, hurry: Hurry | None = None) -> None:
        """Warm shutdown, then SIGKILL whatever is left after ``timeout`` or on ``hurry``."""
        if self.process is None:
            return
        self.terminate()
        deadline = time.monotonic() + timeout
        while self._exit_status() is None and time.monotonic() < deadline:
            if hurry is not None and hurry.requested:
                break
            time.sleep(0.05)
        # The main process isn't reaped yet, so its pid (the group id) can't be reused.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _exit_status(self) -> int | None:
        """The main process's exit status if it exited, without reaping it."""
        assert self.process is not None
        if self.process.returncode is not None:
            return self.process.returncode
        result = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return None if result is None else result.si_status


class LiveView:
    """Samples the pools and the partner often; prints one line per tick with the maxima."""

    def __init__(self, cascade_redis_url: str, prefix: str, partner: Partner) -> None:
        self.redis = redis.Redis.from_url(cascade_redis_url, socket_timeout=5)
        self.limit_keys = pool_keys(prefix, LIMIT_POOL)
        self.pause_keys = pool_keys(prefix, PAUSE_POOL)
        self.partner = partner
        self.started = time.monotonic()
        self._window: list[tuple[int, int, int, int]] = []

    def sample(self) -> None:
        """Read running and parked counts and the partner's calls in flight now."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.limit_keys.used)
            pipe.zcard(self.limit_keys.waiters)
            pipe.zcard(self.pause_keys.waiters)
            running, by_limit, by_pause = pipe.execute()
        in_flight = int(self.partner.redis.get(IN_FLIGHT) or 0)
        self._window.append((int(running or 0), by_limit, by_pause, in_flight))

    def line(self, sent: int, total: int, done: int) -> str:
        """The highest counts sampled since the last line, as one line."""
        self.sample()
        window, self._window = self._window, []
        columns = zip(*window, strict=True)
        running, by_limit, by_pause, in_flight = (max(column) for column in columns)
        peak = self.partner.stats().peak
        return (
            f"{time.monotonic() - self.started:5.1f}s  sent {sent:3d}/{total}  done {done:3d}"
            f"  | partner task: running {running}/{LIMIT}  parked by limit {by_limit:2d}"
            f"  parked by pause {by_pause:2d}  | partner in flight {in_flight} (peak {peak})"
        )

    def close(self) -> None:
        """Close the Redis connection."""
        self.redis.close()


def stop_everything(
    args: argparse.Namespace,
    workers: list[Worker],
    cleanup: list,
    redis_server: RedisServer | None,
    hurry: Hurry,
) -> None:
    """Stop the workers, close connections, stop the private Redis; never raise."""
    if args.redis_url and not hurry.requested:
        with suppress(Exception):  # leave a shared Redis as we found it
            from example_project.shop import cascade

            cascade.resume(PARTNER_SCOPE)
            cascade.unlimit(PARTNER_SCOPE)
    if workers:
        print("stopping workers ...", flush=True)
    for worker in workers:
        with suppress(Exception):
            worker.terminate()  # both shut down at once
    for worker in workers:
        with suppress(Exception):
            worker.stop(hurry=hurry)
    for close in cleanup:
        with suppress(Exception):
            close()
    if "example_project.shop" in sys.modules:
        with suppress(Exception):
            sys.modules["example_project.shop"].app.close()
    if redis_server is not None:
        with suppress(Exception):
            redis_server.stop(hurry)


def redis_urls(url: str) -> tuple[str, str]:
    """The broker URL (the given database) and cascade's (the next one) on one server."""
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0)
    return (
        urlunsplit(parts._replace(path=f"/{database}")),
        urlunsplit(parts._replace(path=f"/{database + 1}")),
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start everything, run the scenario, stop everything; return the exit status."""
    orders = args.orders or (20 if args.short else 60)
    interval = 0.15 if args.short else 0.1
    redis_server: RedisServer | None = None
    workers: list[Worker] = []
    cleanup: list = []
    try:
        if args.redis_url:
            broker_url, cascade_url = redis_urls(args.redis_url)
            print(f"using Redis at {args.redis_url}")
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                print(INSTALL_HINT, file=sys.stderr)
                return 2
            redis_server = RedisServer(binary, workdir)
            broker_url, cascade_url = redis_urls(redis_server.start())
            print(f"started redis-server on port {redis_server.port}")

        # The shop reads its settings from the environment, here and in the workers.
        os.environ.update(
            SHOP_BROKER_URL=broker_url,
            CASCADE_REDIS_URL=cascade_url,
            PARTNER_REDIS_URL=broker_url,
            PARTNER_MAX_IN_FLIGHT=str(LIMIT),
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        from example_project.shop import app, cascade

        partner = Partner.from_env()
        cleanup.append(partner.close)
        partner.reset()

        workers = [Worker(name, workdir, env) for name in ("worker1", "worker2")]
        for worker in workers:
            worker.start()
        print("starting 2 workers (prefork, 4 processes each) ...", flush=True)
        for worker in workers:
            wait_until(worker.is_ready, 60, f"{worker.name} to be ready")
        print("workers ready")

        cascade.limit(PARTNER_SCOPE, LIMIT)
        print(f">>> limit {PARTNER_SCOPE} {LIMIT}  (cluster-wide, via Cascade.limit)")
        time.sleep(0.3)  # workers pick the change up from Redis pub/sub

        view = LiveView(cascade_url, cascade.config.redis_prefix, partner)
        cleanup.append(view.close)
        pause_at, resume_at = orders // 4, orders * 3 // 4
        ids = order_ids(orders)
        results: list[AsyncResult] = []
        pending: list[AsyncResult] = []
        print(f"sending {orders} orders (shop.charge | shop.call_partner_api), one per {interval}s")
        print("each line: the most seen at once since the line before")
        started = next_order = next_tick = time.monotonic()
        deadline = started + orders * interval + (30.0 if args.short else 60.0)
        while True:
            now = time.monotonic()
            if len(results) < orders and now >= next_order:
                if len(results) == pause_at:
                    cascade.pause(PARTNER_SCOPE)
                    print(f">>> pause {PARTNER_SCOPE}  (orders keep arriving; they park in Redis)")
                if len(results) == resume_at:
                    cascade.resume(PARTNER_SCOPE)
                    print(
                        f">>> resume {PARTNER_SCOPE}  (parked orders are handed off, 3 at a time)"
                    )
                result = send_order(app, ids[len(results)])
                results.append(result)
                pending.append(result)
                next_order += interval
            view.sample()
            if now >= next_tick:
                pending = [result for result in pending if not result.ready()]
                print(view.line(len(results), orders, len(results) - len(pending)), flush=True)
                next_tick += 0.5
                if len(results) == orders and not pending:
                    break
                if now >= deadline:
                    print(f"!!! {len(pending)} orders not done by the deadline")
                    break
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        summary = Summary.collect(partner, ids, results, len(pending), elapsed, LIMIT)
    finally:
        with Hurry() as hurry:
            stop_everything(args, workers, cleanup, redis_server, hurry)

    print()
    print("summary")
    for line in summary.lines():
        print(f"  {line}")
    return 0 if summary.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the demo in a temp dir, clean up."""
    parser = argparse.ArgumentParser(prog="python -m example_project.demo", description=__doc__)
    parser.add_argument("--short", action="store_true", help="20 orders instead of 60")
    parser.add_argument("--orders", type=int, default=0, help="how many orders to send")
    parser.add_argument(
        "--redis-url",
        help="use this Redis (its database N for the broker, N+1 for cascade) "
        "instead of starting a private redis-server",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs' temp dir")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="cascade-demo-"))
    status = 1
    try:
        status = run(args, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted; everything was stopped", file=sys.stderr)
        status = 130
    except Abort as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        if status in (0, 2, 130) and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs (redis, worker1, worker2) kept in {workdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
