"""Signed constraints (``cascade_mqtt_secret``): HMAC-SHA256 over the topic and the payload.

A signed payload is the constraint's JSON object plus two fields:

- ``signed_at``: when it was signed (unix seconds, a number);
- ``sig``: ``hex(HMAC-SHA256(secret, topic + "\\n" + canonical))``, where ``canonical`` is
  the object *without* ``sig``, as ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`` in UTF-8 (``jq -cS`` prints the same for integer numbers).

Binding the topic stops a signed payload from being replayed onto another constraint id.
Removal is a signed tombstone ``{"id": ..., "deleted": true, "signed_at": ..., "sig": ...}``
(an empty payload can't carry a signature). The listener also rejects a payload signed
before the last one it accepted for the same id, and a live (not retained) payload older
than ``cascade_mqtt_signature_max_age``: docs/SECURITY.md explains the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from cascade_celery.errors import InvalidConstraint

SIGNATURE = "sig"
SIGNED_AT = "signed_at"
DELETED = "deleted"


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers (besides the topic)."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class Signer:
    """Sign payloads and verify them with one shared secret."""

    def __init__(self, secret: str, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode("utf-8")
        self.max_age = max_age
        self._clock = clock

    def mac(self, topic: str, unsigned: Mapping[str, Any]) -> str:
        """The hex signature of ``unsigned`` (with its ``signed_at``) on ``topic``."""
        message = topic.encode("utf-8") + b"\n" + canonical(unsigned)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, topic: str, document: Mapping[str, Any]) -> bytes:
        """The payload publishing ``document`` on ``topic``, signed now."""
        unsigned = {**document, SIGNED_AT: int(self._clock())}
        return canonical({**unsigned, SIGNATURE: self.mac(topic, unsigned)})

    def tombstone(self, topic: str, constraint_id: str) -> bytes:
        """The signed payload removing ``constraint_id``."""
        return self.sign(topic, {"id": constraint_id, DELETED: True})

    def verify(self, topic: str, data: Mapping[str, Any], *, retained: bool) -> float:
        """Check ``data``'s signature and age; return its ``signed_at``.

        A retained message (the broker's stored state, delivered on subscribe) may be old;
        a live one must be younger than ``max_age``. Neither may come from the future.
        """
        signature, signed_at = data.get(SIGNATURE), data.get(SIGNED_AT)
        if signature is None:
            raise InvalidConstraint("unsigned payload (cascade_mqtt_secret is set)")
        if not isinstance(signature, str):
            raise InvalidConstraint("sig must be a hex string")
        if (isinstance(signed_at, bool) or not isinstance(signed_at, (int, float))
                or not math.isfinite(signed_at)):  # fmt: skip
            raise InvalidConstraint("signed_at must be a number (unix seconds)")
        unsigned = {key: value for key, value in data.items() if key != SIGNATURE}
        if not hmac.compare_digest(signature, self.mac(topic, unsigned)):
            raise InvalidConstraint("bad signature")
        age = self._clock() - signed_at
        if age < -self.max_age:
            raise InvalidConstraint(f"signed {-age:.0f}s in the future")
        if not retained and age > self.max_age:
            raise InvalidConstraint(
                f"signed {age:.0f}s ago, more than cascade_mqtt_signature_max_age "
                f"({self.max_age:g}s): a replay?"
            )
        return float(signed_at)
