"""The CLI's pure helpers: durations in and out, and UTC times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade_celery.cli.options import MAX_DURATION_SECONDS, parse_duration
from cascade_celery.cli.render import format_duration, format_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("1d2h3m4s", 93784),
        ("90", 90),
        ("1.5", 1.5),
        ("0.25", 0.25),
        ("3650d", MAX_DURATION_SECONDS),
    ],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "0", "0s", "0m0s", "-5", "-5m", "10x", "1h30", "10M", "1m1h", "1.5h", "inf", "nan",
     "1e3", " 10m", "10 m", "3651d"],
)  # fmt: skip
def test_anything_else_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|more than 0|longer than"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (1.5, "1.5s"), (45, "45s"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d"),
     (93784, "1d2h3m4s"), (599.6, "10m")],
)  # fmt: skip
def test_durations_format_compactly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=MAX_DURATION_SECONDS))
def test_a_formatted_whole_duration_parses_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_times_are_iso_utc_to_the_second() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(1795866501.9) == "2026-11-28T11:48:21Z"


def test_a_time_beyond_the_calendar_is_still_shown() -> None:
    assert format_time(1e300).startswith("unix time 1000")
