"""The README's first command: ``python -m example_project.demo --short``, end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cascade_celery.pools.keys import constraints_hash, pool_keys
from example_project.demo import find_binary, missing_binaries_message
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADE_", "SHOP_"))}
    return subprocess.run(
        [sys.executable, "-m", "example_project.demo", "--short", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def summary_of(stdout: str) -> dict[str, str]:
    """The summary's figures by name (``processed exactly once`` -> ``20/20``)."""
    _, _, tail = stdout.partition("\nsummary\n")
    return dict(
        re.fullmatch(r"  (\S.*?)\s{2,}(\S.*)", line).groups()  # type: ignore[union-attr]
        for line in tail.splitlines()
        if line.strip()
    )


def assert_story_told(stdout: str) -> None:
    # The limit goes through the real CLI and is confirmed at every worker process
    assert "$ celery -A example_project.shop cascade limit task:shop.call_partner_api 3" in stdout
    assert "in force at every worker process" in stdout
    # The live view shows the pause holding orders, then the resume handing them off
    assert ">>> pause task:shop.call_partner_api" in stdout
    assert ">>> resume task:shop.call_partner_api" in stdout
    assert re.search(r"\| limit 3, paused\s+\| running 0/3 .* by pause\s+[1-9]", stdout), stdout
    summary = summary_of(stdout)
    assert summary["orders sent"] == "20"
    assert summary["processed exactly once"] == "20/20"
    assert summary["duplicates"] == "0"
    peak = re.fullmatch(r"(\d+) \(limit 3\)", summary["partner peak concurrency"])
    assert peak is not None
    assert 1 <= int(peak.group(1)) <= 3
    assert summary["partner overload errors"] == "0"
    assert summary["failed / unfinished tasks"] == "0 / 0"
    assert summary["result"] == "OK"


def test_the_demo_starts_its_own_servers_and_tells_the_whole_story() -> None:
    result = run_demo()

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^started redis-server on port \d+$", result.stdout, re.MULTILINE)
    assert re.search(r"^started mosquitto on port \d+$", result.stdout, re.MULTILINE)
    assert_story_told(result.stdout)
    assert "Traceback" not in result.stderr


def test_the_demo_uses_given_servers_and_leaves_no_constraint_behind(
    redis_server: RedisServer, mosquitto_server: MosquittoServer
) -> None:
    result = run_demo("--redis-url", redis_server.url(0), "--mqtt-url", mosquitto_server.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "started" not in result.stdout
    assert_story_told(result.stdout)
    # The limit and pause it made on the shared servers are lifted again, and the tasks
    # handed off by the resume gave back their reservations in the pause's pool
    cascade = redis_server.client(1)
    assert cascade.hlen(constraints_hash("cascade")) == 0
    pause_pool = pool_keys("cascade", "constraint:pause:task:shop.call_partner_api")
    assert int(cascade.get(pause_pool.used) or 0) == 0


def test_a_missing_server_binary_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    assert find_binary("mosquitto", search_path=str(tmp_path)) is None

    message = missing_binaries_message(["redis-server", "mosquitto"])

    assert "redis-server is not installed: apt-get install redis-server" in message
    assert "--redis-url redis://host:6379/0" in message
    assert "mosquitto is not installed: apt-get install mosquitto" in message
    assert "--mqtt-url mqtt://host:1883" in message


def test_the_compose_producer_sets_the_limit_over_mqtt_and_checks_the_partner(
    redis_server: RedisServer, mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    # docker-compose.yml's services, without Docker: two shop workers and the producer
    env = {
        "SHOP_BROKER_URL": redis_server.url(0),
        "CASCADE_REDIS_URL": redis_server.url(1),
        "CASCADE_MQTT_URL": mosquitto_server.url,
        "PARTNER_MAX_IN_FLIGHT": "3",
    }
    workers = [
        WorkerProcess(
            "example_project.shop", log_dir=tmp_path, concurrency=4, env=env, name=f"shop{n}"
        )
        for n in (1, 2)
    ]
    try:
        for worker in workers:
            worker.start()
        produce = [sys.executable, "-m", "example_project.produce", "--orders", "15",
                   "--interval", "0.01", "--timeout", "60"]  # fmt: skip
        result = subprocess.run(
            produce, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        for worker in workers:
            worker.stop()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "processed exactly once      15/15" in result.stdout
    assert "partner overload errors     0" in result.stdout
