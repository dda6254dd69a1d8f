"""The Redis key layout: one pool's keys share an unbreakable hash tag."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from cascade_celery.pools.keys import (
    POOL_KEY_COUNT,
    PoolKeys,
    constraints_channel,
    constraints_hash,
    constraints_version,
    contended_channel,
    contended_pool,
    pool_defaults,
    pool_keys,
    pool_registry,
    stats_of,
)


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes: between the first '{' and the next '}'."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def test_pool_keys_name_every_part_under_one_hash_tag() -> None:
    keys = pool_keys("cascade", "constraint:concurrency:task:shop.charge")

    assert len(keys) == POOL_KEY_COUNT == len(PoolKeys._fields)
    assert keys.capacity == "cascade:{pool:constraint:concurrency:task:shop.charge}:capacity"
    assert keys.waiters == "cascade:{pool:constraint:concurrency:task:shop.charge}:waiters"
    assert [key.rsplit(":", 1)[1] for key in keys] == list(PoolKeys._fields)


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("a{b}c", "pool:a%7Bb%7Dc"),
        ("}", "pool:%7D"),
        ("{", "pool:%7B"),
        ("100%", "pool:100%25"),
        ("%7B", "pool:%257B"),
    ],
)
def test_braces_and_percent_in_a_name_are_escaped(name: str, tag: str) -> None:
    assert {hash_tag(key) for key in pool_keys("cascade", name)} == {tag}


@given(st.text(min_size=1, max_size=40))
def test_every_key_of_a_pool_shares_its_tag_and_cluster_slot(name: str) -> None:
    keys = pool_keys("cascade", name)

    tags = {hash_tag(key) for key in keys}
    assert len(tags) == 1
    (tag,) = tags
    assert tag is not None
    assert tag.startswith("pool:")
    assert "{" not in tag
    assert "}" not in tag
    assert len({key_slot(key.encode()) for key in keys}) == 1


@given(st.text(max_size=20), st.text(max_size=20))
def test_distinct_pool_names_give_distinct_keys(first: str, second: str) -> None:
    if first == second:
        return
    assert set(pool_keys("cascade", first)).isdisjoint(pool_keys("cascade", second))


def test_distinct_prefixes_give_distinct_keys() -> None:
    assert set(pool_keys("a", "gpu")).isdisjoint(pool_keys("b", "gpu"))


def test_app_wide_keys_live_under_the_prefix_and_differ() -> None:
    keys = [
        pool_registry("p"),
        pool_defaults("p"),
        constraints_hash("p"),
        constraints_version("p"),
        constraints_channel("p"),
    ]

    assert all(key.startswith("p:") for key in keys)
    assert len(set(keys)) == len(keys)
    assert not set(keys) & set(pool_keys("p", "pools"))


@given(st.text(min_size=1, max_size=40))
def test_a_contended_announcement_names_its_pool_back(name: str) -> None:
    # The scripts take the escaped name out of the capacity key, as this pattern does
    # (includes/pool.lua: '^(.*):{pool:([^{}]*)}([^{}]*):[a-z]+$', the base's name and
    # a keyed pool's " <key>=<value>").
    key = pool_keys("a:{b}", name).capacity
    match = re.fullmatch(r"(.*):\{pool:([^{}]*)\}([^{}]*):capacity", key, re.DOTALL)

    assert match is not None
    assert match.group(1) == "a:{b}"
    assert contended_pool((match.group(2) + match.group(3)).encode()) == name
    assert contended_channel("a:{b}") == "a:{b}:pools:contended"


def test_any_key_of_a_pool_names_its_stats_hash() -> None:
    keys = pool_keys("a:{b}", "x:{y}:holders")

    assert {stats_of(key) for key in keys} == {keys.stats}
