"""Drift guard for the Lua scripts: a documented header, a wrapper, resolved includes.

Each ``pools/lua/<name>.lua`` must open with a BullMQ-style ``--[[ … ]]`` header naming its
Input and Output, have a ``Scripts.<name>`` wrapper, and pass no more ARGV than it documents.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import pytest

from cascade_celery.constraints.flow import Line
from cascade_celery.exporter.stats import HANDOFF_BUCKETS_MS, WAIT_BUCKETS_MS
from cascade_celery.pools.keys import pool_keys
from cascade_celery.pools.scripts import SCRIPT_NAMES, SOURCES, Scripts, load_lua

LUA = files("cascade_celery.pools").joinpath("lua")
SCRIPT_FILES = sorted(
    entry.name.removesuffix(".lua")
    for entry in LUA.iterdir()
    if entry.is_file() and entry.name.endswith(".lua")
)
INCLUDE_FILES = sorted(
    entry.name.removesuffix(".lua")
    for entry in LUA.joinpath("includes").iterdir()
    if entry.name.endswith(".lua")
)
_ARGV = re.compile(r"ARGV\[([^\]]+)\]")
# ARGV indices written per pool, like "5 + 2*(i-1)": the first pool's index is the constant.
_PER_POOL = re.compile(r"^(\d+)\s*\+\s*\d+\s*\*\s*\(\s*i\s*-\s*1\s*\)$")


def raw_source(name: str) -> str:
    return LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def header_of(name: str) -> str:
    source = raw_source(name)
    assert source.startswith("--[["), f"{name}.lua must start with a --[[ header block"
    end = source.find("]]")
    assert end > 0, f"{name}.lua: header block is never closed"
    return source[: end + 2]


def argv_indices(text: str) -> set[int]:
    """ARGV indices in ``text``, per-pool ones taken for the first pool."""
    indices = set()
    for expression in _ARGV.findall(text):
        expression = expression.strip()
        per_pool = _PER_POOL.match(expression)
        if expression.isdigit():
            indices.add(int(expression))
        elif per_pool:
            indices.add(int(per_pool.group(1)))
    return indices


def test_there_are_scripts_to_check() -> None:
    assert SCRIPT_FILES
    assert set(SCRIPT_FILES) == set(SCRIPT_NAMES)
    assert set(SOURCES) == set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_every_script_has_a_header_with_input_and_output(name: str) -> None:
    header = header_of(name)

    assert "Input:" in header
    assert "Output:" in header
    assert header.index("Input:") < header.index("Output:")


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_every_script_that_uses_time_says_which_clock(name: str) -> None:
    if "TIME" in SOURCES[name]:
        assert "Clock:" in header_of(name)


@pytest.mark.parametrize("name", INCLUDE_FILES)
def test_every_include_has_a_header(name: str) -> None:
    assert raw_source(f"includes/{name}").startswith("--[[")


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_every_script_has_a_wrapper_of_the_same_name(name: str) -> None:
    assert callable(getattr(Scripts, name, None))


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_every_argv_the_body_reads_is_documented(name: str) -> None:
    header = header_of(name)
    body = raw_source(name)[len(header) :]

    assert argv_indices(body) <= argv_indices(header)


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_includes_are_resolved(name: str) -> None:
    source = SOURCES[name]

    assert "@include" not in source
    for included in re.findall(r'^--- @include "([a-z_/]+)"$', raw_source(name), re.M):
        assert raw_source(included) in source


def test_load_lua_splices_the_include_in_place() -> None:
    source = load_lua("acquire")

    assert source.index("local function reap") < source.index("local task_id = ARGV[1]")
    assert source.count("local function dispatch") == 1


class RecordingScript:
    def __init__(self, name: str, calls: dict[str, dict[str, list[Any]]]) -> None:
        self.name = name
        self.calls = calls

    def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        self.calls[self.name] = {"keys": keys, "args": args}
        return {"renew": [], "confirm": 0, "restamp": 0}.get(self.name, [1, 0])


class RecordingClient:
    """Stands in for redis.Redis: records what each registered script is called with."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, list[Any]]] = {}

    def register_script(self, source: str) -> RecordingScript:
        name = next(name for name, text in SOURCES.items() if text == source)
        return RecordingScript(name, self.calls)


def test_wrappers_pass_as_many_argv_as_each_header_documents_for_one_pool() -> None:
    # Given Scripts on a client that records calls
    client = RecordingClient()
    scripts = Scripts(client)  # type: ignore[arg-type]
    pool = pool_keys("p", "x")

    # When every wrapper is called for one pool
    scripts.acquire(
        [pool], [(3, 1)], task_id="t", member="t:t:1", lease_seconds=1.0, max_handoffs=5
    )
    scripts.confirm([(pool.parked, "t", b"{}")])
    scripts.park(
        pool, task_id="t", units=1, capacity=3, payload=b"{}", lease_seconds=1.0, max_handoffs=5,
        arrival_ms=1.5, line=Line(fair="a", max_parked=2),
    )  # fmt: skip
    scripts.release([pool], member="t:t:1", lease_seconds=1.0, max_handoffs=5, unclaimed="t")
    scripts.renew([pool.holders], member="t:t:1", lease_seconds=1.0)
    scripts.set_capacity(pool, 3, lease_seconds=1.0, max_handoffs=5)
    scripts.claim(pool, task_id="t", member="t:t:1")
    scripts.restamp([pool.holders], member="t:t:1")

    # Then each passes exactly the ARGV its header lists
    assert set(client.calls) == set(SCRIPT_NAMES)
    for name, call in client.calls.items():
        assert len(call["args"]) == max(argv_indices(header_of(name))), name


def test_wrappers_convert_seconds_to_milliseconds_and_none_to_unlimited() -> None:
    client = RecordingClient()
    scripts = Scripts(client)  # type: ignore[arg-type]
    pool = pool_keys("p", "x")

    scripts.set_capacity(pool, None, lease_seconds=0.25, max_handoffs=7)
    scripts.renew([pool.holders], member="m", lease_seconds=0.0001)

    assert client.calls["set_capacity"] == {"keys": list(pool), "args": [-1, 250, 7, 10000]}
    assert client.calls["renew"] == {"keys": [pool.holders, pool.stats], "args": ["m", 1]}


@pytest.mark.parametrize(
    ("table", "bounds"),
    [("WAIT_BUCKETS_MS", WAIT_BUCKETS_MS), ("HANDOFF_BUCKETS_MS", HANDOFF_BUCKETS_MS)],
)
def test_the_exporter_knows_the_histogram_buckets_the_scripts_fill(
    table: str, bounds: tuple[int, ...]
) -> None:
    match = re.search(rf"local {table} = \{{([^}}]*)\}}", raw_source("includes/stats"))

    assert match is not None
    assert tuple(int(bound) for bound in match.group(1).split(",")) == bounds
    assert list(bounds) == sorted(set(bounds))


def test_every_script_that_includes_the_pool_helpers_includes_the_stats_first() -> None:
    for name in SCRIPT_NAMES:
        source = raw_source(name)
        if '--- @include "includes/pool"' in source:
            assert '--- @include "includes/stats"\n--- @include "includes/pool"' in source, name
