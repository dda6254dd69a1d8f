"""The names around rate pools: due messages, lease members, which pools are rate pools."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from cascade_celery.pools.keys import due_channel, due_of, pool_keys
from cascade_celery.pools.outcomes import is_rate_pool, lease_member


def test_the_due_channel_is_the_pools_channel_of_the_prefix() -> None:
    assert due_channel("app") == "app:pools:due"


@given(st.text(min_size=1), st.integers(min_value=0, max_value=2**53))
def test_a_due_message_as_lua_writes_it_gives_the_pool_and_time_back(pool: str, due: int) -> None:
    # Lua writes "<due> <name as escaped in its keys>", taking the name from the keys
    key = pool_keys("app", pool).capacity
    escaped = re.fullmatch(r"app:\{pool:([^{}]*)\}([^{}]*):capacity", key, re.S)
    assert escaped is not None

    assert due_of(f"{due} {escaped.group(1)}{escaped.group(2)}".encode()) == (pool, due)


def test_a_lease_member_names_its_task_and_is_new_every_time() -> None:
    first, second = lease_member("t-1"), lease_member("t-1")

    assert re.fullmatch(r"t:t-1:[0-9a-f]{12}", first)
    assert first != second


def test_only_pools_named_after_a_window_are_rate_pools() -> None:
    assert is_rate_pool("constraint:rate_limit:task:shop.call@10s")
    assert not is_rate_pool("constraint:concurrency:task:shop.call")
    assert not is_rate_pool("resource:gpu@1s")
