"""``--wait``: a change confirmed once every worker process enforces it, else exit 1."""

from __future__ import annotations

from celery import Celery

from cascade_celery import Cascade
from tests.integration.cli.conftest import ok, run_cli, stored


def test_wait_confirms_each_change_once_every_worker_process_enforces_it(
    env: dict[str, str], app: Celery
) -> None:
    store = Cascade.for_app(app)._store()
    for args in (["pause", "task:shop.charge"], ["limit", "queue:emails", "2"],
                 ["resume", "task:shop.charge"], ["unlimit", "queue:emails"]):  # fmt: skip
        # A live process keeps up with each change (as a worker's runtime does)
        store.report_applied("host-a:1", store.version() + 1, ttl=60)
        out = ok(env, *args, "--wait", "10")
        assert out.endswith("\nin force at every worker process\n"), out


def test_wait_fails_with_exit_1_when_a_worker_process_stays_behind(
    env: dict[str, str], app: Celery
) -> None:
    Cascade.for_app(app)._store().report_applied("host-b:7", 0, ttl=60)

    result = run_cli(env, "pause", "task:shop.charge", "--wait", "0.5")

    assert result.returncode == 1
    assert result.stdout.startswith("paused task:shop.charge until resumed")
    assert "Error: the change was made but is not confirmed" in result.stderr
    assert "host-b:7" in result.stderr
    assert "pause-task:shop.charge" in stored(app)


def test_wait_over_mqtt_with_no_worker_running_says_nothing_mirrored_it(
    mqtt_env: dict[str, str], app: Celery
) -> None:
    result = run_cli(mqtt_env, "limit", "queue:emails", "3", "--wait", "0.5")

    assert result.returncode == 1
    assert "not recorded by the MQTT listener of any worker within 0.5s" in result.stderr
    assert "Traceback" not in result.stderr
