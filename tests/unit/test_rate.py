"""Parsing ``rate`` values and naming the pool of each window (constraints/rate.py)."""

from __future__ import annotations

import pytest

from cascade_celery.constraints.rate import (
    MAX_PERIOD_MS,
    MAX_RATE_COUNT,
    MAX_WINDOWS,
    Window,
    parse_rate,
    rate_pool,
    window_of_pool,
)
from cascade_celery.errors import InvalidConstraint


@pytest.mark.parametrize(
    ("rate", "window"),
    [
        ("10/s", Window(1_000, 10, "1s")),
        ("300/m", Window(60_000, 300, "1m")),
        ("1/h", Window(3_600_000, 1, "1h")),
        ("2/d", Window(86_400_000, 2, "1d")),
        ("100/10s", Window(10_000, 100, "10s")),
        ("500/15m", Window(900_000, 500, "15m")),
        ("60/60s", Window(60_000, 60, "60s")),  # kept as written: not "1m"
        ("5/7d", Window(MAX_PERIOD_MS, 5, "7d")),
        (f"{MAX_RATE_COUNT}/s", Window(1_000, MAX_RATE_COUNT, "1s")),
    ],
)
def test_a_rate_string_is_one_window(rate: str, window: Window) -> None:
    assert parse_rate(rate) == (window,)


def test_a_list_is_every_window_in_order() -> None:
    assert parse_rate(["10/s", "500/h"]) == (Window(1_000, 10, "1s"), Window(3_600_000, 500, "1h"))


@pytest.mark.parametrize(
    ("rate", "reason"),
    [
        ("ten/s", "N must be a whole number"),
        ("0/s", "N must be a whole number"),
        ("-1/s", "N must be a whole number"),
        ("1.5/s", "N must be a whole number"),
        ("010/s", "N must be a whole number"),
        ("\uff110/s", "N must be a whole number"),  # a full-width digit
        (f"{MAX_RATE_COUNT + 1}/s", "N is above the maximum"),
        ("10/0s", "the period must be"),
        ("10/x", "the period must be"),
        ("10/-1s", "the period must be"),
        ("10/1.5s", "the period must be"),
        ("10/S", "the period must be"),
        ("10/sec", "the period must be"),
        ("10/", "the period must be"),
        ("10/8d", "longer than 7 days"),
        ("10/169h", "longer than 7 days"),
        ("10", "is not '<N>/<period>'"),
        ("", "is not '<N>/<period>'"),
        ("10/s/s", "the period must be"),
        (" 10/s", "N must be a whole number"),
        ("10 /s", "N must be a whole number"),
        ("10/ s", "the period must be"),
        ("10/s\n", "the period must be"),
    ],
)
def test_a_bad_rate_string_is_refused_with_its_reason(rate: str, reason: str) -> None:
    with pytest.raises(InvalidConstraint, match=reason):
        parse_rate(rate)


@pytest.mark.parametrize(
    ("rate", "reason"),
    [
        (10, "must be a string"),
        (True, "must be a string"),
        (None, "must be a string"),
        (1.5, "must be a string"),
        ({"n": 10}, "must be a string"),
        (("10/s",), "must be a string"),
        ([], "must not be an empty list"),
        (["10/s", 10], "items must be strings"),
        (["10/s", "bad"], "is not '<N>/<period>'"),
        (["1/m", "60/60s"], "two windows of one length: '1m', '60s'"),
        (["1/s", "2/s"], "two windows of one length"),
        ([f"1/{n + 1}s" for n in range(MAX_WINDOWS + 1)], f"more than {MAX_WINDOWS} windows"),
    ],
)
def test_a_bad_rate_value_is_refused_with_its_reason(rate: object, reason: str) -> None:
    with pytest.raises(InvalidConstraint, match=reason):
        parse_rate(rate)


def test_each_window_has_a_pool_named_after_the_scope_and_period() -> None:
    fast, slow = parse_rate(["10/s", "100/10s"])

    assert rate_pool("task:shop.call", fast) == "constraint:rate_limit:task:shop.call@1s"
    assert rate_pool("task:shop.call", slow) == "constraint:rate_limit:task:shop.call@10s"
    assert rate_pool("global", slow) == "constraint:rate_limit:global@10s"


@pytest.mark.parametrize(
    ("pool", "window_ms"),
    [
        ("constraint:rate_limit:task:shop.call@1s", 1_000),
        ("constraint:rate_limit:queue:a@15m", 900_000),
        ("constraint:rate_limit:task:a@b@2h", 7_200_000),  # the last '@' counts
        ("constraint:rate_limit:resource:gpu{0}%@1d", 86_400_000),
        ("constraint:rate_limit:global@1s@", None),
        ("constraint:rate_limit:global@0s", None),
        ("constraint:rate_limit:global@s", None),
        ("constraint:rate_limit:global", None),
        ("constraint:concurrency:task:a@1s", None),
        ("resource:gpu", None),
        ("xconstraint:rate_limit:global@1s", None),
    ],
)
def test_window_of_pool_tells_rate_pools_and_their_window(pool: str, window_ms: int) -> None:
    assert window_of_pool(pool) == window_ms


def test_every_window_parsed_names_a_pool_of_its_length() -> None:
    for window in parse_rate(["1/s", "1/10s", "1/15m", "1/h", "1/7d"]):
        assert window_of_pool(rate_pool("task:x", window)) == window.period_ms
