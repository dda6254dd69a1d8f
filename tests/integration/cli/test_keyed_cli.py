"""``limit`` and ``rate`` with the flow options: --per, --fair-by, --override, --weight,
--max-parked, --on-full; bad ones are a usage error that publishes nothing."""

from __future__ import annotations

import json

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

from cascade_celery.cli import cascade as cascade_group
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.integration.cli.conftest import assert_untouched, ok, retained, run_cli, stored


def test_limit_per_key_with_overrides_fair_weights_and_max_parked_is_stored(
    env: dict[str, str], app: Celery
) -> None:
    out = ok(env, "limit", "task:reports.build", "2", "--per", "kwarg:tenant",
             "--override", "acme=10", "--override", "=1", "--fair-by", "kwarg:user",
             "--weight", "alice=3", "--max-parked", "100", "--on-full", "drop_oldest")  # fmt: skip

    assert out == (
        "limited task:reports.build to 2 at once per kwarg:tenant (acme=10, =1), fair by "
        "kwarg:user (weights alice=3), at most 100 parked per value (drop_oldest) "
        "(id concurrency-task:reports.build)\n"
    )
    assert stored(app)["concurrency-task:reports.build"]["params"] == {
        "limit": 2,
        "per": "kwarg:tenant",
        "overrides": {"acme": 10, "": 1},
        "fair_by": "kwarg:user",
        "weights": {"alice": 3},
        "max_parked": 100,
        "on_full": "drop_oldest",
    }


def test_a_limit_without_flow_options_is_stored_as_before(env: dict[str, str], app: Celery) -> None:
    assert ok(env, "limit", "queue:emails", "3") == (
        "limited queue:emails to 3 at once (id concurrency-queue:emails)\n"
    )
    assert stored(app)["concurrency-queue:emails"]["params"] == {"limit": 3}


def test_rate_overrides_repeated_for_one_value_make_its_list_of_windows(
    mqtt_env: dict[str, str], mosquitto_server: MosquittoServer, unique_prefix: str
) -> None:
    out = ok(mqtt_env, "rate", "task:partner.call", "5/s", "--per", "header:tenant",
             "--override", "acme=10/s", "--override", "acme=500/h", "--override", "beta=1/m",
             "--max-parked", "3")  # fmt: skip

    assert out.startswith(
        "rate-limited task:partner.call to 5/s per header:tenant (acme=10/s and 500/h, "
        "beta=1/m), at most 3 parked per value (reject) (id rate_limit-task:partner.call)"
    ), out
    topic = f"{unique_prefix}/constraints/rate_limit-task:partner.call"
    payload = json.loads(retained(mosquitto_server, unique_prefix)[topic].payload)
    assert payload["params"] == {
        "rate": "5/s",
        "per": "header:tenant",
        "overrides": {"acme": ["10/s", "500/h"], "beta": "1/m"},
        "max_parked": 3,
    }


def test_a_fair_rate_over_several_windows(env: dict[str, str], app: Celery) -> None:
    ok(env, "rate", "queue:emails", "10/s", "500/h", "--fair-by", "arg:0")

    assert stored(app)["rate_limit-queue:emails"]["params"] == {
        "rate": ["10/s", "500/h"],
        "fair_by": "arg:0",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per", "kwarg:t", "--override", "acme"], "'acme' is not VALUE=LIMIT"),
        (["--per", "kwarg:t", "--override", "acme="], "'acme=' is not VALUE=LIMIT"),
        (["--per", "kwarg:t", "--override", "acme=ten"], "acme=ten: a limit is an integer"),
        (["--per", "kwarg:t", "--override", "acme=1.5"], "acme=1.5: a limit is an integer"),
        (["--per", "kwarg:t", "--override", "acme=-1"], "from 0 to 1000000"),
        (["--per", "kwarg:t", "--override", "a=1", "--override", "a=2"], "'a' is given twice"),
        (["--override", "acme=10"], "--override needs --per"),
        (["--per", "tenant"], "'tenant': unknown key kind; use 'kwarg:<name>'"),
        (["--per", "cookie:x"], "'cookie:x': unknown key kind"),
        (["--fair-by", "kwarg:1x"], "the kwarg name must be a Python identifier"),
        (["--per", "arg:x"], "the arg name must be an index"),
        (["--weight", "acme=2"], "--weight needs --fair-by"),
        (["--fair-by", "kwarg:t", "--weight", "acme=0"], "a weight is an integer from 1 to 1000"),
        (["--fair-by", "kwarg:t", "--weight", "acme=x"], "a weight is an integer"),
        (["--max-parked", "5"], "--max-parked needs --per or --fair-by"),
        (["--per", "kwarg:t", "--max-parked", "0"], "0 is not in the range"),
        (["--per", "kwarg:t", "--max-parked", "x"], "'x' is not a valid integer"),
        (["--per", "kwarg:t", "--on-full", "reject"], "--on-full needs --max-parked"),
        (["--per", "kwarg:t", "--max-parked", "1", "--on-full", "later"], "'later' is not one"),
    ],
)
def test_bad_flow_options_on_limit_are_a_usage_error_and_publish_nothing(
    mqtt_app: Celery,
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    args: list[str],
    message: str,
) -> None:
    context = CLIContext(app=mqtt_app, no_color=True, workdir=None)

    result = CliRunner().invoke(cascade_group, ["limit", "task:a", "2", *args], obj=context)

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert_untouched(redis_server, unique_prefix, mosquitto_server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per", "kwarg:t", "--override", "acme=fast"], "params.overrides['acme']"),
        (["--per", "kwarg:t", "--override", "acme"], "'acme' is not VALUE=RATE"),
        (["--override", "acme=1/s"], "--override needs --per"),
        (["--per", "kwarg:t", "--fair-by", "nope"], "'nope': unknown key kind"),
    ],
)
def test_bad_flow_options_on_rate_through_celery_exit_2_and_publish_nothing(
    mqtt_env: dict[str, str],
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    args: list[str],
    message: str,
) -> None:
    result = run_cli(mqtt_env, "rate", "task:a", "10/s", *args)

    assert result.returncode == 2
    assert message in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        next(line for line in result.stderr.splitlines() if message in line)
    ]
    assert "Traceback" not in result.stderr
    assert_untouched(redis_server, unique_prefix, mosquitto_server)
