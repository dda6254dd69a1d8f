"""Constraint and Scope: strict parsing from JSON-like data, round trips, matching, expiry."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade_celery.constraints.model import Constraint, Scope, TaskInfo
from cascade_celery.errors import InvalidConstraint


def payload(**overrides: Any) -> dict[str, Any]:
    """A valid constraint payload with some fields replaced (or removed, with ``...``)."""
    data: dict[str, Any] = {
        "id": "limit-charge",
        "type": "concurrency",
        "scope": "task:shop.charge",
        "params": {"limit": 3},
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not ...}


# -- from_dict: accepted ------------------------------------------------------------------


def test_from_dict_parses_every_field() -> None:
    constraint = Constraint.from_dict(payload(expires_at=1_700_000_000.5))

    assert constraint.id == "limit-charge"
    assert constraint.type == "concurrency"
    assert constraint.scope == Scope("task", "shop.charge")
    assert constraint.params == {"limit": 3}
    assert constraint.expires_at == 1_700_000_000.5


@pytest.mark.parametrize(
    "constraint_id",
    ["a", "A-z_0.9:x", "pause-task:shop.charge", "x" * 128],
)
def test_from_dict_accepts_ids_of_the_allowed_alphabet(constraint_id: str) -> None:
    assert Constraint.from_dict(payload(id=constraint_id)).id == constraint_id


@pytest.mark.parametrize(
    "scope",
    ["global", "task:shop.charge", "task:shop.*", "queue:emails", "resource:gpu", "queue:a:b"],
)
def test_from_dict_accepts_each_scope_kind(scope: str) -> None:
    assert str(Constraint.from_dict(payload(scope=scope)).scope) == scope


@pytest.mark.parametrize("params", [None, ...])
def test_from_dict_treats_missing_or_null_params_as_empty(params: object) -> None:
    assert Constraint.from_dict(payload(type="pause", params=params)).params == {}


@pytest.mark.parametrize("expires_at", [None, 0, 1_700_000_000, 1.5, -1.0])
def test_from_dict_accepts_numeric_or_null_expires_at(expires_at: float | None) -> None:
    assert Constraint.from_dict(payload(expires_at=expires_at)).expires_at == expires_at


def test_from_dict_copies_params_so_later_changes_to_the_input_do_not_leak() -> None:
    data = payload()
    constraint = Constraint.from_dict(data)

    data["params"]["limit"] = 99

    assert constraint.params == {"limit": 3}


# -- from_dict: rejected ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([], id="list"),
        pytest.param("pause", id="string"),
        pytest.param(None, id="null"),
        pytest.param(3, id="number"),
    ],
)
def test_from_dict_rejects_anything_but_an_object(data: object) -> None:
    with pytest.raises(InvalidConstraint, match="object"):
        Constraint.from_dict(data)


@pytest.mark.parametrize(
    "constraint_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("a+b", id="plus"),
        pytest.param("a#", id="hash"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param(5, id="number"),
        pytest.param(None, id="null"),
    ],
)
def test_from_dict_rejects_bad_ids(constraint_id: object) -> None:
    with pytest.raises(InvalidConstraint, match="id"):
        Constraint.from_dict(payload(id=constraint_id))


@pytest.mark.parametrize("missing", ["id", "type", "scope"])
def test_from_dict_rejects_missing_required_fields(missing: str) -> None:
    with pytest.raises(InvalidConstraint, match=f"missing field '{missing}'"):
        Constraint.from_dict(payload(**{missing: ...}))


def test_from_dict_rejects_unknown_fields_and_names_them() -> None:
    with pytest.raises(InvalidConstraint, match=r"unknown field.*limit"):
        Constraint.from_dict(payload(limit=3))


@pytest.mark.parametrize(
    "constraint_type",
    [pytest.param("", id="empty"), pytest.param(1, id="number"), pytest.param(None, id="null")],
)
def test_from_dict_rejects_a_type_that_is_not_a_non_empty_string(constraint_type: object) -> None:
    with pytest.raises(InvalidConstraint, match="type"):
        Constraint.from_dict(payload(type=constraint_type))


@pytest.mark.parametrize("params", [[], "limit=3", 3, True])
def test_from_dict_rejects_params_that_are_not_an_object(params: object) -> None:
    with pytest.raises(InvalidConstraint, match="params must be an object"):
        Constraint.from_dict(payload(params=params))


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param(True, id="bool"),
        pytest.param("1700000000", id="string"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(-math.inf, id="-inf"),
        pytest.param([1], id="list"),
    ],
)
def test_from_dict_rejects_bad_expires_at(expires_at: object) -> None:
    with pytest.raises(InvalidConstraint, match="expires_at"):
        Constraint.from_dict(payload(expires_at=expires_at))


def test_from_dict_rejects_an_integer_expires_at_too_large_for_a_float() -> None:
    # JSON has no size limit on integers: json.loads gives a Python int, not inf.
    data = json.loads(json.dumps(payload())[:-1] + ', "expires_at": 1' + "0" * 400 + "}")

    with pytest.raises(InvalidConstraint, match="expires_at"):
        Constraint.from_dict(data)


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("everything", id="unknown-word"),
        pytest.param("tasks:shop.charge", id="unknown-kind"),
        pytest.param("Global", id="case"),
        pytest.param("global:x", id="global-with-name"),
        pytest.param("task:", id="task-empty"),
        pytest.param("queue:", id="queue-empty"),
        pytest.param("resource:", id="resource-empty"),
        pytest.param(":x", id="no-kind"),
        pytest.param("", id="empty"),
        pytest.param("task:shop charge", id="space"),
        pytest.param("task:shop.charge\n", id="newline"),
        pytest.param("queue:\temails", id="tab"),
        pytest.param("task: shop", id="leading-space"),
        pytest.param("task:shop\x00", id="nul"),
        pytest.param("task:" + "x" * 201, id="too-long"),
        pytest.param(3, id="number"),
        pytest.param(None, id="null"),
        pytest.param({"kind": "task"}, id="object"),
    ],
)
def test_from_dict_rejects_bad_scopes(scope: object) -> None:
    with pytest.raises(InvalidConstraint, match="scope"):
        Constraint.from_dict(payload(scope=scope))


def test_scope_name_of_the_maximum_length_is_accepted() -> None:
    assert Scope.parse("task:" + "x" * 200).name == "x" * 200


# -- to_dict, is_expired ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        payload(),
        payload(expires_at=1_700_000_000.25),
        payload(id="p", type="pause", scope="global", params={}),
        payload(scope="resource:gpu", params={"limit": 0}),
    ],
)
def test_to_dict_round_trips_through_from_dict(data: dict[str, Any]) -> None:
    constraint = Constraint.from_dict(data)

    assert constraint.to_dict() == data
    assert Constraint.from_dict(json.loads(json.dumps(constraint.to_dict()))) == constraint


def test_to_dict_leaves_out_a_missing_expires_at() -> None:
    assert "expires_at" not in Constraint.from_dict(payload()).to_dict()


def test_is_expired_from_the_expiry_time_on() -> None:
    constraint = Constraint.from_dict(payload(expires_at=100.0))

    assert not constraint.is_expired(99.999)
    assert constraint.is_expired(100.0)
    assert constraint.is_expired(101.0)


def test_constraint_without_expiry_never_expires() -> None:
    assert not Constraint.from_dict(payload()).is_expired(1e18)


# -- Scope.matches ------------------------------------------------------------------------

CHARGE = TaskInfo(name="shop.charge", queue="payments", resources={"resource:gpu": 1})


def test_global_scope_matches_every_task() -> None:
    assert Scope.parse("global").matches(CHARGE)
    assert Scope.parse("global").matches(TaskInfo(name="other"))


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("task:shop.charge", True),
        ("task:shop.charg", False),
        ("task:shop.charge2", False),
        ("task:Shop.Charge", False),
        ("task:shop", False),
    ],
)
def test_exact_task_scope_matches_only_that_name(scope: str, expected: bool) -> None:
    assert Scope.parse(scope).matches(CHARGE) is expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("shop.*", "shop.charge", True),
        ("shop.*", "shop.refund.partial", True),
        ("shop.*", "billing.charge", False),
        ("shop.*", "shop", False),
        ("*", "anything", True),
        ("shop.?harge", "shop.charge", True),
        ("shop.?harge", "shop.ccharge", False),
        ("shop.[ab]*", "shop.audit", True),
        ("shop.[ab]*", "shop.bill", True),
        ("shop.[ab]*", "shop.charge", False),
        ("shop.[!c]*", "shop.charge", False),
        ("SHOP.*", "shop.charge", False),
    ],
)
def test_glob_task_scope_matches_by_pattern(pattern: str, name: str, expected: bool) -> None:
    scope = Scope("task", pattern)

    assert scope.is_glob
    assert scope.matches(TaskInfo(name=name)) is expected


def test_a_task_name_without_glob_characters_is_not_a_glob() -> None:
    assert not Scope.parse("task:shop.charge").is_glob
    assert not Scope.parse("queue:shop.*").is_glob


def test_queue_scope_matches_tasks_routed_to_that_queue() -> None:
    scope = Scope.parse("queue:payments")

    assert scope.matches(CHARGE)
    assert not scope.matches(TaskInfo(name="shop.charge", queue="emails"))
    assert not scope.matches(TaskInfo(name="shop.charge", queue=None))


def test_queue_scope_is_not_a_glob() -> None:
    assert not Scope.parse("queue:pay*").matches(CHARGE)


def test_resource_scope_matches_tasks_requiring_that_resource() -> None:
    assert Scope.parse("resource:gpu").matches(CHARGE)
    assert not Scope.parse("resource:disk").matches(CHARGE)
    assert not Scope.parse("resource:gpu").matches(TaskInfo(name="shop.charge"))


# -- never anything but InvalidConstraint -------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
field_names = st.sampled_from(["id", "type", "scope", "params", "expires_at"])
scope_texts = st.one_of(
    st.sampled_from(["global", "task:shop.*", "queue:q", "resource:gpu", "global:", "task:"]),
    st.builds(
        "{}:{}".format,
        st.sampled_from(["global", "task", "queue", "resource", "x"]),
        st.text(max_size=10),
    ),
    st.text(max_size=20),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # json.loads gives ints of any size
    st.floats(allow_nan=True, allow_infinity=True),
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{0,130}", fullmatch=True), json_values),
        "type": st.one_of(st.sampled_from(["pause", "concurrency"]), json_values),
        "scope": st.one_of(scope_texts, json_values),
        "params": st.one_of(st.fixed_dictionaries({"limit": numbers}), json_values),
        "expires_at": st.one_of(numbers, json_values),
    },
)
arbitrary = st.one_of(
    json_values,
    near_valid,
    st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=6),
)


def assert_parses_or_is_invalid(data: object) -> None:
    try:
        constraint = Constraint.from_dict(data)
    except InvalidConstraint:
        return
    assert Constraint.from_dict(constraint.to_dict()) == constraint


@given(arbitrary)
def test_from_dict_returns_a_constraint_or_raises_invalid_constraint(data: object) -> None:
    assert_parses_or_is_invalid(data)


@given(field_names, st.one_of(numbers, json_values, scope_texts))
def test_one_bad_field_in_a_valid_payload_only_ever_raises_invalid_constraint(
    field: str, value: object
) -> None:
    assert_parses_or_is_invalid(payload(**{field: value}))
