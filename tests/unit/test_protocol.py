"""The v1 wire protocol: topics, payloads, and one clear InvalidConstraint per bad message."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_celery.constraints.model import ID_PATTERN, Constraint, Scope
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import InvalidConstraint
from cascade_celery.mqtt.protocol import (
    MAX_PAYLOAD_BYTES,
    Change,
    decode,
    encode,
    id_from_topic,
    subscription,
    topic_for,
)
from tests.strategies import JSON_VALUES, NEAR_CONSTRAINTS, near_valid_payloads

PREFIX = "cascade"
TOPIC = "cascade/constraints/limit-charge"
VALIDATE = HandlerRegistry.builtin().validate


def limit_payload(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "limit-charge",
        "type": "concurrency",
        "scope": "task:shop.charge",
        "params": {"limit": 3},
    }
    data.update(overrides)
    return data


def as_bytes(data: object) -> bytes:
    return json.dumps(data).encode()


def decode_payload(payload: bytes, topic: str = TOPIC) -> Change:
    return decode(PREFIX, topic, payload, VALIDATE)


# -- topics -------------------------------------------------------------------------------


def test_subscription_covers_one_level_under_constraints() -> None:
    assert subscription("ops") == "ops/constraints/+"


def test_topic_for_names_the_constraint() -> None:
    assert topic_for("ops", "pause.charge:1") == "ops/constraints/pause.charge:1"


@pytest.mark.parametrize(
    "constraint_id", ["a", "pause-task_shop.charge:1", "A" * 128, "0.9:-_", "x" * 64]
)
def test_topic_round_trips_the_id(constraint_id: str) -> None:
    assert id_from_topic("ops", topic_for("ops", constraint_id)) == constraint_id


@given(st.from_regex(ID_PATTERN, fullmatch=True))
@settings(max_examples=1000, deadline=None)
def test_topic_round_trips_every_valid_id(constraint_id: str) -> None:
    assert id_from_topic(PREFIX, topic_for(PREFIX, constraint_id)) == constraint_id


@pytest.mark.parametrize(
    "constraint_id", ["", "a b", "a/b", "a+", "#", "é", "a" * 129, "a\n", "tab\t"]
)
def test_topic_for_rejects_a_bad_id(constraint_id: str) -> None:
    with pytest.raises(InvalidConstraint, match="must match"):
        topic_for(PREFIX, constraint_id)


@pytest.mark.parametrize(
    "topic",
    [
        "other/constraints/a",
        "cascadex/constraints/a",
        "cascade/constraint/a",
        "cascade/a",
        "/cascade/constraints/a",
        "constraints/a",
        "",
    ],
)
def test_id_from_topic_rejects_a_wrong_prefix(topic: str) -> None:
    with pytest.raises(InvalidConstraint, match="not under cascade/constraints/"):
        id_from_topic(PREFIX, topic)


@pytest.mark.parametrize(
    ("topic", "shown"),
    [
        ("cascade/constraints/a/b", "'a/b'"),
        ("cascade/constraints/a/", "'a/'"),
        ("cascade/constraints/", "''"),
        ("cascade/constraints/bad id", "'bad id'"),
        ("cascade/constraints/bad!", "'bad!'"),
        ("cascade/constraints/é", "'é'"),
        ("cascade/constraints/" + "a" * 129, "'" + "a" * 129 + "'"),
        ("cascade/constraints/a\n", "'a\\n'"),
    ],
)
def test_id_from_topic_rejects_a_bad_id_level(topic: str, shown: str) -> None:
    with pytest.raises(InvalidConstraint) as caught:
        id_from_topic(PREFIX, topic)

    assert f"topic id {shown} must match [A-Za-z0-9._:-]{{1,128}}" == str(caught.value)


def test_id_from_topic_accepts_exactly_128_characters() -> None:
    assert id_from_topic(PREFIX, "cascade/constraints/" + "z" * 128) == "z" * 128


# -- good payloads ------------------------------------------------------------------------


def test_encode_is_compact_sorted_json() -> None:
    constraint = Constraint.from_dict(limit_payload())

    assert encode(constraint) == (
        b'{"id":"limit-charge","params":{"limit":3},"scope":"task:shop.charge",'
        b'"type":"concurrency"}'
    )


@pytest.mark.parametrize(
    "constraint",
    [
        Constraint("limit-charge", "concurrency", Scope("task", "shop.charge"), {"limit": 3}),
        Constraint("limit-charge", "concurrency", Scope("queue", "emails"), {"limit": 0}),
        Constraint("limit-charge", "concurrency", Scope("resource", "gpu"), {"limit": 2}),
        Constraint("limit-charge", "pause", Scope("global")),
        Constraint("limit-charge", "pause", Scope("task", "shop.*"), expires_at=1_900_000_000.25),
        Constraint("limit-charge", "pause", Scope("task", "x"), expires_at=1_900_000_000),
    ],
    ids=["task", "queue-zero", "resource", "global-pause", "glob-expiring", "int-expiry"],
)
def test_encode_then_decode_round_trips(constraint: Constraint) -> None:
    change = decode_payload(encode(constraint))

    assert change == Change("limit-charge", constraint)


_SCOPES = st.one_of(
    st.just(Scope("global")),
    st.builds(
        Scope,
        st.sampled_from(["task", "queue", "resource"]),
        st.text(
            st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40
        ).filter(lambda name: name.isprintable() and not any(c.isspace() for c in name)),
    ),
)
_CONSTRAINTS = st.builds(
    Constraint,
    id=st.from_regex(ID_PATTERN, fullmatch=True),
    type=st.sampled_from(["pause", "concurrency"]),
    scope=_SCOPES,
    params=st.just({}),
    expires_at=st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**53),
).map(
    lambda c: (
        Constraint(c.id, c.type, c.scope, {"limit": len(c.id)}, c.expires_at)
        if c.type == "concurrency"
        else c
    )
)


@given(_CONSTRAINTS)
@settings(max_examples=1000, deadline=None)
def test_every_valid_constraint_round_trips(constraint: Constraint) -> None:
    topic = topic_for(PREFIX, constraint.id)

    assert decode(PREFIX, topic, encode(constraint), VALIDATE) == Change(constraint.id, constraint)


def test_empty_payload_is_a_removal() -> None:
    assert decode_payload(b"") == Change("limit-charge", None)


def test_empty_payload_on_a_bad_topic_is_still_rejected() -> None:
    with pytest.raises(InvalidConstraint, match="topic id 'a b'"):
        decode_payload(b"", topic="cascade/constraints/a b")


def test_null_params_and_null_expiry_mean_none() -> None:
    change = decode_payload(as_bytes(limit_payload(type="pause", params=None, expires_at=None)))

    assert change.constraint == Constraint("limit-charge", "pause", Scope("task", "shop.charge"))


def test_a_payload_of_exactly_the_maximum_size_is_read() -> None:
    body = as_bytes(limit_payload())
    payload = body + b" " * (MAX_PAYLOAD_BYTES - len(body))

    assert len(payload) == MAX_PAYLOAD_BYTES
    assert decode_payload(payload).constraint == Constraint.from_dict(limit_payload())


def test_non_ascii_utf8_is_read() -> None:
    payload = as_bytes(limit_payload(scope="task:café.charge")).replace(b"\\u00e9", "é".encode())

    constraint = decode_payload(payload).constraint

    assert constraint is not None
    assert constraint.scope == Scope("task", "café.charge")


# -- bad payloads: each is InvalidConstraint with its reason ------------------------------

BAD_PAYLOADS = [
    pytest.param(b"not json", "payload is not JSON", id="not-json"),
    pytest.param(b'{"id": "limit-charge",', "payload is not JSON", id="truncated-json"),
    pytest.param(b"[1, 2]", "constraint must be a JSON object", id="json-array"),
    pytest.param(b"42", "constraint must be a JSON object", id="json-number"),
    pytest.param(b'"limit-charge"', "constraint must be a JSON object", id="json-string"),
    pytest.param(b"null", "constraint must be a JSON object", id="json-null"),
    pytest.param(b"true", "constraint must be a JSON object", id="json-bool"),
    pytest.param(as_bytes(limit_payload(id=7)), "id 7 must match", id="id-not-string"),
    pytest.param(as_bytes(limit_payload(type=1)), "type must be a non-empty string", id="type-int"),
    pytest.param(as_bytes(limit_payload(type="")), "type must be a non-empty", id="type-empty"),
    pytest.param(
        as_bytes(limit_payload(scope=["task"])), "scope must be a string", id="scope-list"
    ),
    pytest.param(
        as_bytes(limit_payload(scope="tsk:x")), "unknown scope kind 'tsk'", id="scope-kind"
    ),
    pytest.param(as_bytes(limit_payload(scope="task")), "is not 'global'", id="scope-no-name"),
    pytest.param(as_bytes(limit_payload(params=[3])), "params must be an object", id="params-list"),
    pytest.param(
        as_bytes(limit_payload(params={"limit": "3"})), "params.limit, an integer", id="limit-str"
    ),
    pytest.param(
        as_bytes(limit_payload(params={"limit": 2.5})), "params.limit, an integer", id="limit-float"
    ),
    pytest.param(
        as_bytes(limit_payload(params={"limit": True})), "params.limit, an integer", id="limit-bool"
    ),
    pytest.param(
        as_bytes(limit_payload(expires_at="soon")), "expires_at must be a number", id="expiry-str"
    ),
    pytest.param(
        as_bytes(limit_payload(expires_at=True)), "expires_at must be a number", id="expiry-bool"
    ),
    pytest.param(
        b'{"id":"limit-charge","type":"pause","scope":"global","expires_at":1e400}',
        "expires_at must be a number",
        id="expiry-overflows-to-inf",
    ),
    pytest.param(
        as_bytes(limit_payload(expires_at=10**400)), "expires_at must be a number", id="expiry-huge"
    ),
    pytest.param(as_bytes(limit_payload(type="rate")), "unknown type 'rate'", id="unknown-type"),
    pytest.param(
        as_bytes(limit_payload(params={"limit": -1})),
        "params.limit must be between 0 and",
        id="negative-limit",
    ),
    pytest.param(
        as_bytes(limit_payload(params={"limit": 3, "burst": 1})),
        "unknown concurrency param(s): burst",
        id="extra-param",
    ),
    pytest.param(
        as_bytes(limit_payload(type="pause", params={"limit": 1})),
        "pause takes no params",
        id="pause-with-params",
    ),
    pytest.param(as_bytes(limit_payload(owner="ops")), "unknown field(s): owner", id="extra-field"),
    pytest.param(
        as_bytes({k: v for k, v in limit_payload().items() if k != "scope"}),
        "missing field 'scope'",
        id="missing-scope",
    ),
    pytest.param(
        as_bytes(limit_payload(id="other")),
        "payload id 'other' does not match topic id 'limit-charge'",
        id="id-mismatch",
    ),
    pytest.param(
        b" " * (MAX_PAYLOAD_BYTES + 1),
        f"payload of {MAX_PAYLOAD_BYTES + 1} bytes exceeds {MAX_PAYLOAD_BYTES}",
        id="oversized",
    ),
    pytest.param(b'{"id": "limit-\xff"}', "payload is not UTF-8", id="invalid-utf8"),
    pytest.param(b"\xed\xa0\x80", "payload is not UTF-8", id="utf8-encoded-surrogate"),
    pytest.param(b"NaN", "NaN is not valid JSON", id="bare-nan"),
    pytest.param(
        as_bytes(limit_payload(type="pause", params={}, expires_at=math.nan)),
        "NaN is not valid JSON",
        id="nan-expiry",
    ),
    pytest.param(
        as_bytes(limit_payload(type="pause", params={}, expires_at=math.inf)),
        "Infinity is not valid JSON",
        id="infinity-expiry",
    ),
    pytest.param(
        as_bytes(limit_payload(type="pause", params={}, expires_at=-math.inf)),
        "-Infinity is not valid JSON",
        id="minus-infinity-expiry",
    ),
    pytest.param(b"[" * 10_000, "payload is not JSON", id="deeply-nested-array"),
    pytest.param(
        b'{"a":' * 2000 + b"1" + b"}" * 2000, "payload is not JSON", id="deeply-nested-object"
    ),
    pytest.param(
        b'{"id":"limit-charge","type":"pause","scope":"global","params":{"a":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}}",
        "payload is not JSON",
        id="deeply-nested-params",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), BAD_PAYLOADS)
def test_bad_payload_is_rejected_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidConstraint) as caught:
        decode_payload(payload)

    assert reason in str(caught.value)


def test_deeply_nested_json_within_the_size_limit_is_rejected() -> None:
    payload = b"[" * (MAX_PAYLOAD_BYTES // 2) + b"]" * (MAX_PAYLOAD_BYTES // 2)

    with pytest.raises(InvalidConstraint, match=r"payload is not JSON \(.*recursion"):
        decode_payload(payload)


def test_the_validator_is_not_asked_about_a_malformed_payload() -> None:
    asked: list[Constraint] = []

    with pytest.raises(InvalidConstraint):
        decode(PREFIX, TOPIC, as_bytes(limit_payload(id="other")), asked.append)

    assert asked == []


def test_the_validators_reason_is_passed_through() -> None:
    def refuse(constraint: Constraint) -> None:
        raise InvalidConstraint(f"no {constraint.type} here")

    with pytest.raises(InvalidConstraint, match=r"^no concurrency here$"):
        decode(PREFIX, TOPIC, as_bytes(limit_payload()), refuse)


# -- never anything but a Change or InvalidConstraint -------------------------------------


def decodes_or_rejects(topic: str, payload: bytes) -> None:
    try:
        change = decode(PREFIX, topic, payload, VALIDATE)
    except InvalidConstraint as error:
        reason = str(error)
    else:
        assert isinstance(change, Change)
        assert change.constraint_id == id_from_topic(PREFIX, topic)
        assert (change.constraint is None) == (payload == b"")
        if change.constraint is not None:
            assert change.constraint.id == change.constraint_id
        return
    assert reason, "InvalidConstraint must say why"


_TOPICS = st.one_of(
    st.just(TOPIC),
    st.text(),
    st.text().map(lambda tail: f"{PREFIX}/constraints/{tail}"),
    st.from_regex(ID_PATTERN, fullmatch=True).map(lambda cid: topic_for(PREFIX, cid)),
)


@given(topic=_TOPICS, payload=st.binary(max_size=MAX_PAYLOAD_BYTES + 64))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_bytes_decode_or_are_rejected(topic: str, payload: bytes) -> None:
    decodes_or_rejects(topic, payload)


@given(topic=_TOPICS, value=JSON_VALUES | NEAR_CONSTRAINTS)
@settings(max_examples=1000, deadline=None)
def test_arbitrary_json_values_decode_or_are_rejected(topic: str, value: object) -> None:
    decodes_or_rejects(topic, json.dumps(value).encode())


@given(value=NEAR_CONSTRAINTS)
@settings(max_examples=1000, deadline=None)
def test_near_constraints_on_their_own_topic_decode_or_are_rejected(value: object) -> None:
    decodes_or_rejects(TOPIC, json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))


@given(topic=st.text(), payload=st.just(b"") | st.just(as_bytes(limit_payload())))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_topics_decode_or_are_rejected(topic: str, payload: bytes) -> None:
    decodes_or_rejects(topic, payload)


@given(payload=near_valid_payloads("limit-charge"))
@settings(max_examples=1000, deadline=None)
def test_damaged_encodings_of_good_constraints_decode_or_are_rejected(payload: bytes) -> None:
    decodes_or_rejects(TOPIC, payload)
