"""Bad input is a usage error (exit 2) and publishes nothing; an unreachable server, an error."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

from cascade_celery.cli import cascade as cascade_group
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import free_port
from tests.integration.cli.conftest import assert_untouched, run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "task:"], "scope 'task' needs a name"),
        (["limit", "queue:emails", "-1"], "'-1': a limit is an integer from 0"),
        (["pause", "task:a", "--for", "10x"], "'10x' is not a duration like 30s"),
        (["limit", "queue:emails"], "Missing argument 'N'"),
    ],
)
def test_bad_input_through_celery_exits_2_and_publishes_nothing(
    mqtt_env: dict[str, str],
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    args: list[str],
    message: str,
) -> None:
    result = run_cli(mqtt_env, *args)

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert_untouched(redis_server, unique_prefix, mosquitto_server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "bogus"], "scope 'bogus' is not 'global', 'task:<name>'"),
        (["pause", "global:x"], "scope 'global' takes no name"),
        (["pause", "queue:a b"], "no whitespace"),
        (["pause", "weird:x"], "unknown scope kind 'weird'"),
        (["limit", "queue:emails", "three"], "'three': a limit is an integer"),
        (["limit", "queue:emails", "1.5"], "'1.5': a limit is an integer"),
        (["limit", "queue:emails", "1000001"], "to 1000000"),
        (["limit", "bad", "3"], "scope 'bad' is not"),
        (["pause", "task:a", "--for", "0"], "must be more than 0 seconds"),
        (["pause", "task:a", "--for", "0s"], "must be more than 0 seconds"),
        (["pause", "task:a", "--for", "-5m"], "'-5m' is not a duration"),
        (["pause", "task:a", "--for", "1h30"], "'1h30' is not a duration"),
        (["pause", "task:a", "--for", "10M"], "'10M' is not a duration"),
        (["pause", "task:a", "--for", "inf"], "'inf' is not a duration"),
        (["pause", "task:a", "--for", "99999d"], "longer than 3650d"),
        (["limit", "queue:emails", "3", "--for", ""], "'' is not a duration"),
        (["pause", "task:a", "--for"], "requires an argument"),
        (["pause", "task:a", "--id", "bad id"], "'bad id' must match"),
        (["limit", "queue:emails", "3", "--id", "a/b"], "'a/b' must match"),
        (["resume", "task:a", "--id", "x" * 129], "must match"),
        (["pause"], "Missing argument 'SCOPE'"),
        (["resume"], "Missing argument 'SCOPE'"),
        (["unlimit"], "Missing argument 'SCOPE'"),
        (["limit"], "Missing argument 'SCOPE'"),
        (["resume", "queue:"], "needs a name"),
        (["unlimit", "nope"], "scope 'nope' is not"),
        (["status", "--interval", "0"], "not in the range x>=0.1"),
        (["status", "--count", "0"], "not in the range x>=1"),
        (["pause", "task:a", "--bogus"], "No such option"),
        (["pause", "task:a", "--wait", "0"], "not in the range x>0"),
        (["limit", "queue:emails", "3", "--wait", "-1"], "not in the range x>0"),
        (["resume", "task:a", "--wait", "soon"], "'soon' is not a valid float"),
        (["unlimit", "queue:emails", "--wait"], "requires an argument"),
        (["rate"], "Missing argument 'SCOPE'"),
        (["rate", "task:a"], "Missing argument 'RATE...'"),
        (["rate", "task:a", "--for", "10m"], "Missing argument 'RATE...'"),
        (["rate", "bad", "10/s"], "scope 'bad' is not"),
        (["rate", "task:a", "10/s", "--for", "10x"], "'10x' is not a duration"),
        (["rate", "task:a", "10/s", "--for", "0"], "must be more than 0 seconds"),
        (["rate", "task:a", "10/s", "--id", "a b"], "'a b' must match"),
        (["rate", "task:a", "10/s", "--wait", "0"], "not in the range x>0"),
        (["unrate"], "Missing argument 'SCOPE'"),
        (["unrate", "nope"], "scope 'nope' is not"),
        (["unrate", "task:a", "--id", "a/b"], "'a/b' must match"),
    ],
)
def test_bad_input_is_a_usage_error_and_publishes_nothing(
    mqtt_app: Celery,
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    args: list[str],
    message: str,
) -> None:
    context = CLIContext(app=mqtt_app, no_color=True, workdir=None)

    result = CliRunner().invoke(cascade_group, args, obj=context)

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert_untouched(redis_server, unique_prefix, mosquitto_server)


@pytest.mark.parametrize(
    "args",
    [
        ["pause", "task:shop.charge"],
        ["limit", "queue:emails", "3", "--for", "1m"],
        ["resume", "task:shop.charge"],
        ["unlimit", "queue:emails"],
        ["constraints"],
        ["status"],
        ["status", "--json"],
    ],
)
def test_unreachable_redis_is_an_error_with_a_message(env: dict[str, str], args: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = run_cli({**env, "CASCADE_TEST_REDIS": url}, *args)

    assert result.returncode == 1
    assert f"Error: Redis at {url} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [["pause", "task:shop.charge", "--for", "10m"], ["limit", "queue:emails", "3"]]
)
def test_unreachable_mqtt_broker_is_an_error_with_a_message(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str, args: list[str]
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"

    result = run_cli({**env, "CASCADE_TEST_MQTT": url}, *args)

    assert result.returncode == 1
    assert f"Error: MQTT broker {url} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert redis_server.client().keys(f"{unique_prefix}*") == []


def test_outside_celery_the_group_asks_to_be_run_through_celery(app: Celery) -> None:
    result = CliRunner().invoke(cascade_group, ["constraints"])

    assert result.exit_code == 2
    assert "celery -A <app> cascade" in result.stderr
