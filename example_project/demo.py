"""The one-command demo: ``python -m example_project.demo [--short]``.

It starts a private ``redis-server`` and ``mosquitto`` (unless ``--redis-url`` /
``--mqtt-url`` are given) and two prefork workers that take their constraints from MQTT.
With the ``celery cascade`` CLI it limits the partner task to 3 at once cluster-wide;
then it sends orders, pauses the partner task over MQTT while orders keep arriving and
resumes it, showing twice a second the partner's pools and the constraints in force.
It prints a summary and exits 0 only if the partner never saw more than 3 calls at once,
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
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import redis
from celery.result import AsyncResult

from cascade_celery import Cascade, Constraint
from cascade_celery.redis_client import client_for
from cascade_celery.status import PoolStatus, read_status
from example_project.partner import IN_FLIGHT, Partner
from example_project.produce import PARTNER_SCOPE, Summary, order_ids, send_order

REPO_ROOT = Path(__file__).resolve().parents[1]
LIMIT = 3
LIMIT_POOL = f"constraint:concurrency:{PARTNER_SCOPE}"
PAUSE_POOL = f"constraint:pause:{PARTNER_SCOPE}"
INSTALL_HINTS = {
    "redis-server": "apt-get install redis-server (Debian, Ubuntu) or brew install redis "
    "(macOS); or use a running Redis: --redis-url redis://host:6379/0",
    "mosquitto": "apt-get install mosquitto (Debian, Ubuntu) or brew install mosquitto "
    "(macOS); or use a running broker: --mqtt-url mqtt://host:1883",
}
#: Where Debian puts mosquitto; not always on an ordinary user's PATH.
SBIN = ("/usr/sbin", "/usr/local/sbin")
MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# The default (1000) would cut a large retained burst short; 0: no limit.
max_queued_messages 0
set_tcp_nodelay true
log_dest file {log}
"""


class Abort(Exception):
    """The demo could not run (its message says why)."""


def find_binary(name: str, search_path: str | None = None) -> str | None:
    """``name`` on the PATH (or ``search_path``), else in the usual sbin directories."""
    if search_path is not None:
        return shutil.which(name, path=search_path)
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_binaries_message(missing: list[str]) -> str:
    """What to install, for each server binary that is missing."""
    lines = [f"{name} is not installed: {INSTALL_HINTS[name]}" for name in missing]
    return "\n".join(lines)


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


class Server:
    """A private server process on a free port, its files in ``directory``."""

    name = "server"

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start it and return its URL once it answers."""
        for _ in range(3):  # a free port can be taken before the server binds it
            self.port = free_port()
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, cwd=self.directory,
            )  # fmt: skip
            if self._wait_ready():
                return self.url()
            self.stop()
        raise Abort(f"{self.name} did not start; see its log in {self.directory}")

    def command(self) -> list[str]:
        """The command line that starts the server on ``self.port``."""
        raise NotImplementedError

    def url(self) -> str:
        """The URL clients use."""
        raise NotImplementedError

    def answers(self) -> bool:
        """Whether the server serves requests now."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with suppress(OSError, redis.ConnectionError, redis.TimeoutError):
                if self.answers():
                    return True
            time.sleep(0.05)
        return False

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


class RedisServer(Server):
    """A private ``redis-server`` (nothing persisted: the demo's data is thrown away)."""

    name = "redis-server"

    def command(self) -> list[str]:
        """``redis-server`` on 127.0.0.1:<port>, log in the directory, no persistence."""
        return [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.directory), "--logfile", "redis.log",
                "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip

    def url(self) -> str:
        """Database 0 of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        """PING answers."""
        probe = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(probe.ping())
        finally:
            probe.close()


class MosquittoServer(Server):
    """A private ``mosquitto`` configured for retained bursts (see MOSQUITTO_CONF)."""

    name = "mosquitto"

    def command(self) -> list[str]:
        """``mosquitto -c <conf>``, the config written for the current port."""
        conf = self.directory / "mosquitto.conf"
        log = self.directory / "mosquitto.log"
        conf.write_text(MOSQUITTO_CONF.format(port=self.port, log=log))
        return [self.binary, "-c", str(conf)]

    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"


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
    """One line per tick: the partner task's pools, the constraints in force, the partner."""

    def __init__(self, cascade: Cascade, partner: Partner) -> None:
        self.cascade = cascade
        self.redis = client_for(cascade.config, socket_timeout=5)
        self.partner = partner
        self.started = time.monotonic()

    def line(self, sent: int, total: int, done: int) -> str:
        """The state now, as one line (the same figures ``celery cascade status`` shows)."""
        active = [c for c in self.cascade.constraints() if str(c.scope) == PARTNER_SCOPE]
        pools = {
            pool.name: pool
            for pool in read_status(self.redis, self.cascade.config.redis_prefix, active)
        }
        limit, pause = pools.get(LIMIT_POOL), pools.get(PAUSE_POOL)
        in_flight = int(self.partner.redis.get(IN_FLIGHT) or 0)
        by_limit, by_pause = _count(limit, "parked"), _count(pause, "parked")
        return (
            f"{time.monotonic() - self.started:5.1f}s  sent {sent:3d}/{total}  done {done:3d}"
            f"  | {describe(active):16s} | running {_count(limit, 'running')}/{_capacity(limit)}"
            f"  parked: by limit {by_limit:2d}, by pause {by_pause:2d}"
            f"  | partner in flight {in_flight} (peak {self.partner.stats().peak})"
        )

    def close(self) -> None:
        """Close the Redis connection."""
        self.redis.close()


def describe(constraints: list[Constraint]) -> str:
    """The constraints on the partner task, briefly: ``limit 3, paused``."""
    parts = [
        "paused" if c.type == "pause" else f"limit {c.params.get('limit')}"
        for c in sorted(constraints, key=lambda c: c.type)
    ]
    return ", ".join(parts) or "no constraint"


def _count(pool: PoolStatus | None, field: str) -> int:
    return 0 if pool is None else int(getattr(pool, field))


def _capacity(pool: PoolStatus | None) -> str:
    return "-" if pool is None or pool.capacity is None else str(pool.capacity)


def run_cli(env: dict[str, str], *args: str) -> None:
    """Run ``celery -A example_project.shop cascade ARGS`` as an operator would, echoed."""
    print(f"$ celery -A example_project.shop cascade {' '.join(args)}", flush=True)
    command = [sys.executable, "-m", "celery", "-A", "example_project.shop", "cascade", *args]
    result = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    for line in (result.stdout + result.stderr).splitlines():
        print(f"  {line}")
    if result.returncode != 0:
        raise Abort(f"the cascade command failed (exit {result.returncode})")


def stop_everything(
    shared: bool,
    workers: list[Worker],
    cleanup: list[Callable[[], object]],
    servers: list[Server],
    hurry: Hurry,
) -> None:
    """Stop the workers, close connections, stop the private servers; never raise."""
    if shared and not hurry.requested:
        with suppress(Exception):  # leave shared servers as we found them
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
    for server in servers:
        with suppress(Exception):
            server.stop(hurry)


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


def start_servers(
    args: argparse.Namespace, workdir: Path, servers: list[Server]
) -> tuple[str, str]:
    """The Redis and MQTT URLs to use, starting private servers for those not given."""
    wanted = [name for name, url in (("redis-server", args.redis_url),
                                     ("mosquitto", args.mqtt_url)) if not url]  # fmt: skip
    binaries = {name: find_binary(name) for name in wanted}
    missing = [name for name, binary in binaries.items() if binary is None]
    if missing:
        raise MissingBinaries(missing_binaries_message(missing))
    urls = {"redis-server": args.redis_url, "mosquitto": args.mqtt_url}
    for name, binary in binaries.items():
        assert binary is not None
        server = (RedisServer if name == "redis-server" else MosquittoServer)(binary, workdir)
        servers.append(server)
        urls[name] = server.start()
        print(f"started {name} on port {server.port}")
    for name in ("redis-server", "mosquitto"):
        if name not in binaries:
            print(f"using {name.split('-')[0].capitalize()} at {urls[name]}")
    return str(urls["redis-server"]), str(urls["mosquitto"])


class MissingBinaries(Exception):
    """A server the demo must start is not installed (the message says how to get it)."""


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start everything, run the scenario, stop everything; return the exit status."""
    orders = args.orders or (20 if args.short else 60)
    interval = 0.15 if args.short else 0.1
    servers: list[Server] = []
    workers: list[Worker] = []
    cleanup: list[Callable[[], object]] = []
    try:
        try:
            redis_url, mqtt_url = start_servers(args, workdir, servers)
        except MissingBinaries as exc:
            print(exc, file=sys.stderr)
            return 2
        broker_url, cascade_url = redis_urls(redis_url)

        # The shop reads its settings from the environment, here and in the workers.
        os.environ.update(
            SHOP_BROKER_URL=broker_url,
            CASCADE_REDIS_URL=cascade_url,
            CASCADE_MQTT_URL=mqtt_url,
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
        print("starting 2 workers (prefork, 4 processes each; constraints from MQTT) ...",
              flush=True)  # fmt: skip
        for worker in workers:
            wait_until(worker.is_ready, 60, f"{worker.name} to be ready")
        print("workers ready")

        # Published retained over MQTT; --wait returns once every worker process enforces it.
        run_cli(env, "limit", PARTNER_SCOPE, str(LIMIT), "--wait", "30")

        view = LiveView(cascade, partner)
        cleanup.append(view.close)
        pause_at, resume_at = orders // 4, orders * 3 // 4
        ids = order_ids(orders)
        results: list[AsyncResult] = []
        pending: list[AsyncResult] = []
        print(f"sending {orders} orders (shop.charge | shop.call_partner_api), one per {interval}s")
        started = next_order = next_tick = time.monotonic()
        deadline = started + orders * interval + (30.0 if args.short else 60.0)
        while True:
            now = time.monotonic()
            if len(results) < orders and now >= next_order:
                if len(results) == pause_at:
                    cascade.pause(PARTNER_SCOPE)
                    print(f">>> pause {PARTNER_SCOPE}  (Cascade.pause: a retained MQTT message; "
                          "orders keep arriving and park in Redis)")  # fmt: skip
                if len(results) == resume_at:
                    cascade.resume(PARTNER_SCOPE)
                    print(f">>> resume {PARTNER_SCOPE}  (parked orders are handed off, "
                          f"{LIMIT} at a time)")  # fmt: skip
                result = send_order(app, ids[len(results)])
                results.append(result)
                pending.append(result)
                next_order += interval
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
            shared = bool(args.redis_url or args.mqtt_url)
            stop_everything(shared, workers, cleanup, servers, hurry)

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
    parser.add_argument(
        "--mqtt-url",
        help="use this MQTT broker (mqtt://host:1883) instead of starting a private mosquitto",
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
            print(f"logs (redis, mosquitto, worker1, worker2) kept in {workdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
