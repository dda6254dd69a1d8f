"""Signed constraints: HMAC-SHA256 over topic and canonical JSON, with an age window."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import InvalidConstraint
from cascade_celery.mqtt.protocol import Change, decode
from cascade_celery.mqtt.signing import Signer, canonical

SECRET = "correct horse battery staple"  # noqa: S105  # a test secret
TOPIC = "cascade/constraints/hold"
NOW = 1_800_000_000.0
VALIDATE = HandlerRegistry.builtin().validate
PAUSE = {"id": "hold", "type": "pause", "scope": "task:shop.charge"}


def signer(now: float = NOW, secret: str = SECRET) -> Signer:
    return Signer(secret, max_age=300, clock=lambda: now)


def signed(document: dict[str, Any], *, at: float = NOW, topic: str = TOPIC) -> dict[str, Any]:
    return dict(json.loads(signer(at).sign(topic, document)))


def check(data: dict[str, Any], *, now: float = NOW, retained: bool = False) -> Change:
    payload = json.dumps(data).encode()
    return decode("cascade", TOPIC, payload, VALIDATE, signer=signer(now), retained=retained)


def test_a_signed_payload_round_trips() -> None:
    change = check(signed(PAUSE))

    assert change.constraint is not None
    assert change.constraint.id == "hold"
    assert change.signed_at == NOW


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda d: d.update(scope="global"), "bad signature"),
        (lambda d: d.update(signed_at=NOW + 1), "bad signature"),
        (lambda d: d.update(sig="0" * 64), "bad signature"),
        (lambda d: d.pop("sig"), "unsigned payload"),
        (lambda d: d.update(sig=7), "sig must be a hex string"),
        (lambda d: d.update(signed_at="now"), "signed_at must be a number"),
        (lambda d: d.update(signed_at=True), "signed_at must be a number"),
    ],
)
def test_a_tampered_or_unsigned_payload_is_rejected(tamper: Any, reason: str) -> None:
    data = signed(PAUSE)
    tamper(data)

    with pytest.raises(InvalidConstraint, match=reason):
        check(data)


def test_a_signature_is_bound_to_its_topic() -> None:
    other = signed({**PAUSE, "id": "hold"}, topic="cascade/constraints/other")

    with pytest.raises(InvalidConstraint, match="bad signature"):
        check(other)


def test_another_secret_does_not_verify() -> None:
    other = signer(secret="another secret, 16+ chars")  # noqa: S106
    data = dict(json.loads(other.sign(TOPIC, PAUSE)))

    with pytest.raises(InvalidConstraint, match="bad signature"):
        check(data)


def test_a_live_payload_older_than_the_window_is_a_replay_but_a_retained_one_is_state() -> None:
    old = signed(PAUSE, at=NOW - 301)

    with pytest.raises(InvalidConstraint, match=r"signed 301s ago, more than .*300s"):
        check(old)
    assert check(old, retained=True).constraint is not None
    assert check(signed(PAUSE, at=NOW - 299)).constraint is not None


def test_a_payload_from_the_future_is_rejected_even_retained() -> None:
    with pytest.raises(InvalidConstraint, match="in the future"):
        check(signed(PAUSE, at=NOW + 301), retained=True)


def test_a_signed_tombstone_removes_and_an_empty_payload_is_refused() -> None:
    assert check(signed({"id": "hold", "deleted": True})) == Change("hold", None, NOW)

    with pytest.raises(InvalidConstraint, match="signed tombstone"):
        decode("cascade", TOPIC, b"", VALIDATE, signer=signer())
    with pytest.raises(InvalidConstraint, match="only"):
        check(signed({"id": "hold", "deleted": True, "type": "pause"}))
    with pytest.raises(InvalidConstraint, match="does not match topic id"):
        check(signed({"id": "other", "deleted": True}))


def test_without_a_secret_signature_fields_are_ignored() -> None:
    payload = json.dumps(signed(PAUSE)).encode()

    change = decode("cascade", TOPIC, payload, VALIDATE)

    assert change.constraint is not None
    assert change.signed_at is None


def test_the_documented_shell_recipe_signs_the_same_way() -> None:
    # jq -cS prints canonical JSON; openssl computes the HMAC over "<topic>\n<json>"
    unsigned = {**PAUSE, "signed_at": int(NOW)}
    body = canonical(unsigned).decode()
    recipe = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET],
        input=f"{TOPIC}\n{body}".encode(), capture_output=True, check=True,
    )  # fmt: skip
    mac = recipe.stdout.decode().split()[-1]

    assert check({**unsigned, "sig": mac}).constraint is not None
    assert body == '{"id":"hold","scope":"task:shop.charge","signed_at":1800000000,"type":"pause"}'


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5))
def test_any_other_object_with_a_made_up_signature_is_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidConstraint):
        check({**data, "signed_at": NOW, "sig": "ab" * 32})
