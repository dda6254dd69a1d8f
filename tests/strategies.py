"""Hypothesis strategies for fuzzing the control plane: near-valid MQTT payloads.

Shared by the parser's unit tests (thousands of examples) and the live-worker test
(a sample published through a real broker).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from cascade_celery.mqtt.protocol import MAX_PAYLOAD_BYTES

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and +-Infinity included: json.dumps writes them as constants
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)

#: Rates a ``rate_limit`` must reject (and a few it takes), alone or in lists.
RATE_VALUES = st.one_of(
    st.sampled_from(["ten/s", "0/s", "10/0s", "10/x", "-1/s", "1.5/s", "10/s ", " 10/s",
                     "10 /s", "010/s", "10/", "/s", "10", "", "1e3/s", "100001/s", "1/8d",
                     "10/s", "100/10s"]),
    st.integers(-2, 10), st.floats(), st.booleans(), st.none(),
    st.lists(st.sampled_from(["10/s", "500/h", "10/s", "1m", "60s", "bad"]), max_size=9),
)  # fmt: skip

FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["pause", "concurrency", "rate_limit", "global", "task:shop.*", "queue:q"]),
    st.sampled_from(["resource:gpu", "global:x", "task:", "task:a b", "limit-charge"]),
    st.fixed_dictionaries({}, optional={"limit": JSON_VALUES | st.integers(-5, 5)}),
    st.fixed_dictionaries({}, optional={"rate": RATE_VALUES, "limit": st.integers(0, 3)}),
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad`` (``one_of`` would flatten and dilute)."""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 0 else good)


def near_constraints(constraint_id: str) -> st.SearchStrategy[Any]:
    """JSON values close to a constraint with ``constraint_id``, a field at a time wrong."""
    return st.one_of(
        # Mostly well-formed, a field at a time going wrong: reaches the handlers' validators.
        st.fixed_dictionaries(
            {
                "id": mostly(st.just(constraint_id), FIELD_VALUES),
                "type": mostly(
                    st.sampled_from(["pause", "concurrency", "rate_limit"]), FIELD_VALUES
                ),
                "scope": mostly(
                    st.sampled_from(["global", "task:shop.*", "queue:q", "resource:gpu"]),
                    FIELD_VALUES,
                ),
            },
            optional={
                "params": mostly(
                    st.fixed_dictionaries({"limit": mostly(st.integers(-3, 3), JSON_VALUES)})
                    | st.fixed_dictionaries({"rate": mostly(RATE_VALUES, JSON_VALUES)})
                    | st.just({}),
                    FIELD_VALUES,
                ),
                "expires_at": mostly(st.none() | st.floats() | st.integers(), JSON_VALUES),
            },
        ),
        # Any subset of the fields, and an unknown one.
        st.fixed_dictionaries(
            {},
            optional={
                "id": FIELD_VALUES,
                "type": FIELD_VALUES,
                "scope": FIELD_VALUES,
                "params": FIELD_VALUES,
                "expires_at": FIELD_VALUES,
                "extra": JSON_VALUES,
            },
        ),
    )


NEAR_CONSTRAINTS = near_constraints("limit-charge")


def _valid_payloads(constraint_id: str) -> list[bytes]:
    """Well-formed payloads of a constraint with ``constraint_id``, to be damaged."""
    return [
        json.dumps(value).encode()
        for value in (
            {"id": constraint_id, "type": "concurrency", "scope": "task:shop.charge",
             "params": {"limit": 3}},
            {"id": constraint_id, "type": "pause", "scope": "queue:emails", "expires_at": 1.9e9},
            {"id": constraint_id, "type": "concurrency", "scope": "resource:gpu",
             "params": {"limit": 0}},
            {"id": constraint_id, "type": "rate_limit", "scope": "task:shop.*",
             "params": {"rate": ["10/s", "500/h"]}},
        )
    ]  # fmt: skip


#: Bytes that matter to JSON and UTF-8, for insertions and replacements.
_SIGNIFICANT = [*b'{}[]",:\\ 0123456789eE+-.ntfal', 0, 0x7F, 0xC0, 0xFF]


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with one byte-level mutation: cut, dropped, inserted or replaced bytes."""
    at = draw(st.integers(0, len(valid)))
    byte = bytes([draw(st.sampled_from(_SIGNIFICANT) | st.integers(0, 255))])
    return draw(
        st.sampled_from(
            [
                valid[:at],
                valid[:at] + valid[at + 1 :],
                valid[:at] + byte + valid[at:],
                valid[:at] + byte + valid[at + 1 :],
                valid[:at] + valid[at:] * 2,
            ]
        )
    )


def _wrapped(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` inside other JSON, behind a BOM, or blown past the size limit."""
    return st.one_of(
        st.integers(1, 1100).map(lambda depth: b"[" * depth + valid + b"]" * depth),
        st.just(b"\xef\xbb\xbf" + valid),
        st.just(valid[:-1] + b', "id": "other"}'),
        st.just(valid[:-1] + b', "params": {"limit": 1e400}}'),
        st.just(valid[:-1] + b', "expires_at": 1e400}'),
        st.just(valid[:-1] + b', "x": "' + b"a" * MAX_PAYLOAD_BYTES + b'"}'),
        st.just(valid.decode().encode("utf-16")),
    )


def near_valid_payloads(constraint_id: str) -> st.SearchStrategy[bytes]:
    """Payload bytes of good constraints with ``constraint_id``, damaged a little."""
    return st.sampled_from(_valid_payloads(constraint_id)).flatmap(
        lambda valid: _mutated(valid) | _wrapped(valid)
    )
