"""The v1 wire protocol: topics and payloads to and from constraints. Pure, no I/O.

Topic ``<prefix>/constraints/<id>``; payload a UTF-8 JSON object with the constraint's
fields, published retained with QoS 1. An empty payload removes the constraint; so does
a tombstone ``{"id": ..., "deleted": true}`` (the only removal a signature can cover).
With ``cascade_mqtt_secret`` set every payload must be signed (see signing.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from cascade_celery.constraints.model import ID_PATTERN, Constraint
from cascade_celery.errors import InvalidConstraint
from cascade_celery.mqtt.signing import DELETED, SIGNATURE, SIGNED_AT, Signer

#: Payloads larger than this are rejected unread.
MAX_PAYLOAD_BYTES = 16 * 1024
_SEGMENT = "constraints"


def subscription(prefix: str) -> str:
    """The topic filter a worker subscribes to."""
    return f"{prefix}/{_SEGMENT}/+"


def topic_for(prefix: str, constraint_id: str) -> str:
    """The topic of constraint ``constraint_id``."""
    if not ID_PATTERN.fullmatch(constraint_id):
        raise InvalidConstraint(f"id {constraint_id!r} must match [A-Za-z0-9._:-]{{1,128}}")
    return f"{prefix}/{_SEGMENT}/{constraint_id}"


def id_from_topic(prefix: str, topic: str) -> str:
    """The constraint id a topic names; InvalidConstraint if it is not a constraint topic."""
    head = f"{prefix}/{_SEGMENT}/"
    if not topic.startswith(head):
        raise InvalidConstraint(f"topic is not under {head}")
    constraint_id = topic[len(head) :]
    if not ID_PATTERN.fullmatch(constraint_id):
        raise InvalidConstraint(f"topic id {constraint_id!r} must match [A-Za-z0-9._:-]{{1,128}}")
    return constraint_id


def encode(constraint: Constraint) -> bytes:
    """The payload published for ``constraint``."""
    return json.dumps(constraint.to_dict(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Change:
    """A decoded message: ``constraint`` to apply, or None to remove ``constraint_id``."""

    constraint_id: str
    constraint: Constraint | None
    #: When a signed payload was signed (None: unsigned).
    signed_at: float | None = None


def decode(
    prefix: str,
    topic: str,
    payload: bytes,
    validate: Callable[[Constraint], None],
    *,
    signer: Signer | None = None,
    retained: bool = False,
) -> Change:
    """Decode one message; raise InvalidConstraint with the reason if it is bad.

    With ``signer`` the payload must carry a valid signature (``retained``: it was
    delivered as the broker's stored state, so it may be old).
    """
    constraint_id = id_from_topic(prefix, topic)
    if not payload:
        if signer is not None:
            raise InvalidConstraint(
                "empty payload: with cascade_mqtt_secret set, remove a constraint with a "
                'signed tombstone {"id": ..., "deleted": true}'
            )
        return Change(constraint_id, None)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidConstraint(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidConstraint(f"payload is not UTF-8 ({exc.reason})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidConstraint(f"payload is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidConstraint("constraint must be a JSON object")
    signed_at = None if signer is None else signer.verify(topic, data, retained=retained)
    data = {key: value for key, value in data.items() if key not in (SIGNATURE, SIGNED_AT)}
    if data.get(DELETED) is True:
        if set(data) != {"id", DELETED}:
            raise InvalidConstraint('a tombstone holds only "id" and "deleted": true')
        if data["id"] != constraint_id:
            raise InvalidConstraint(
                f"payload id {data['id']!r} does not match topic id {constraint_id!r}"
            )
        return Change(constraint_id, None, signed_at)
    constraint = Constraint.from_dict(data)
    if constraint.id != constraint_id:
        raise InvalidConstraint(
            f"payload id {constraint.id!r} does not match topic id {constraint_id!r}"
        )
    validate(constraint)
    return Change(constraint_id, constraint, signed_at)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")
