"""Keys: a part of a task's call (``kwarg:<name>``, ``arg:<index>``, ``header:<name>``)
whose value splits a limit per key value (``per``) or a line by key value (``fair_by``).

A key value is read at the gate from the call and is only ever compared and stored, never
evaluated: a string as it is, anything else as its JSON text (``str()`` of what JSON
cannot encode). A call lacking the part has the value ``""``. Values longer than
:data:`MAX_VALUE_BYTES` (UTF-8) are replaced by ``sha256:<hex digest>``.

A keyed pool is named ``"<base pool> <key>=<value>"``: a pool name holds no whitespace
otherwise (scope names cannot), so the first space splits it. Its keys in Redis share the
base pool's hash tag (pools/keys.py). The pools of one key on one base, ``"<base> <key>"``,
form a *family*: what a constraint sizes, and what the pool registry lists.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from cascade_celery.errors import InvalidConstraint

#: Longer key values are hashed (a tenant id is short; a blob is not a tenant).
MAX_VALUE_BYTES = 200
#: The key of limits a task declares in code with a key function (``GatedTask.key``).
CODE_KEY = "code"

_KINDS = ("kwarg", "arg", "header")
_KWARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}", re.ASCII)
_INDEX = re.compile(r"0|[1-9][0-9]{0,2}", re.ASCII)
_HEADER = re.compile(r"[A-Za-z0-9_.-]{1,100}", re.ASCII)
_FORMAT = "'kwarg:<name>', 'arg:<index>' or 'header:<name>'"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Which part of a call a key reads: ``kind`` (kwarg, arg, header) and its ``name``."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_key(value: object, param: str = "key") -> KeySpec:
    """Parse a key like ``"kwarg:tenant"``; InvalidConstraint naming ``param`` if bad."""
    if not isinstance(value, str):
        raise InvalidConstraint(f"params.{param} must be a string {_FORMAT}")
    kind, sep, name = value.partition(":")
    if not sep or kind not in _KINDS:
        raise InvalidConstraint(f"params.{param} {value!r}: unknown key kind; use {_FORMAT}")
    pattern = {"kwarg": _KWARG, "arg": _INDEX, "header": _HEADER}[kind]
    if not pattern.fullmatch(name):
        what = {"kwarg": "a Python identifier", "arg": "an index 0..999",
                "header": "letters, digits, '_', '.', '-'"}[kind]  # fmt: skip
        raise InvalidConstraint(f"params.{param} {value!r}: the {kind} name must be {what}")
    return KeySpec(kind, name)


def key_value(
    key: KeySpec, args: Any, kwargs: Mapping[str, Any], headers: Mapping[str, Any]
) -> str:
    """The value of ``key`` in a call (``""`` when the call lacks that part)."""
    if key.kind == "kwarg":
        value = kwargs.get(key.name, "") if isinstance(kwargs, Mapping) else ""
    elif key.kind == "arg":
        index = int(key.name)
        value = args[index] if isinstance(args, (list, tuple)) and index < len(args) else ""
    else:
        value = headers.get(key.name, "")
    return as_key_value(value)


def as_key_value(value: object) -> str:
    """A key value from any value a call holds (bounded)."""
    return bounded(value if isinstance(value, str) else _as_text(value))


def _as_text(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):  # e.g. keys of mixed types
        return str(value)


def bounded(value: str) -> str:
    """``value``, or its digest when longer than :data:`MAX_VALUE_BYTES` in UTF-8."""
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_VALUE_BYTES:
        return value
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class Keyed(NamedTuple):
    """A keyed pool's name, split: its base pool, key and value."""

    base: str
    key: str
    value: str

    @property
    def family(self) -> str:
        return family_name(self.base, self.key)


def keyed_pool(base: str, key: KeySpec | str, value: str) -> str:
    """The pool of ``value`` in the family of ``key`` on ``base``."""
    return f"{base} {key}={value}"


def family_name(base: str, key: KeySpec | str) -> str:
    """The family of every keyed pool of ``key`` on ``base``."""
    return f"{base} {key}"


def split_keyed(pool: str) -> Keyed | None:
    """``pool`` split if it is a keyed pool, else None."""
    base, sep, rest = pool.partition(" ")
    if not sep:
        return None
    key, eq, value = rest.partition("=")
    if not eq:
        return None
    return Keyed(base, key, value)


def split_family(name: str) -> tuple[str, str] | None:
    """(base, key) if ``name`` names a family (``"<base> <key>"``), else None."""
    base, sep, key = name.partition(" ")
    if not sep or "=" in key:
        return None
    return base, key
