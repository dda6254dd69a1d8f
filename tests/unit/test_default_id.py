"""default_id: the id the Python API and CLI give a constraint is always a valid, stable id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade_celery.cascade import default_id
from cascade_celery.constraints.model import ID_PATTERN


def test_a_safe_scope_gives_a_readable_id() -> None:
    assert default_id("pause", "task:shop.charge") == "pause-task:shop.charge"
    assert default_id("concurrency", "global") == "concurrency-global"


@pytest.mark.parametrize("scope", ["task:shop.*", "task:shop.?x", "task:shop.[ab]", "task:é"])
def test_an_unsafe_scope_gives_a_valid_id(scope: str) -> None:
    assert ID_PATTERN.fullmatch(default_id("pause", scope))


def test_globs_that_differ_only_in_unsafe_characters_get_different_ids() -> None:
    ids = {default_id("pause", scope) for scope in ("task:shop.*", "task:shop.?", "task:shop._")}

    assert len(ids) == 3


def test_the_same_scope_always_gives_the_same_id() -> None:
    assert default_id("pause", "task:shop.*") == default_id("pause", "task:shop.*")


@given(st.sampled_from(["pause", "concurrency"]), st.text(min_size=1, max_size=300))
def test_every_scope_gives_a_valid_id(type_: str, scope: str) -> None:
    assert ID_PATTERN.fullmatch(default_id(type_, scope))
