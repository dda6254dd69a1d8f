"""Rate windows: the ``rate`` param parsed, and the pool that counts each window.

``"<N>/<period>"`` admits at most N tasks in any interval of the period's length. Each
window is a pool of capacity N whose leases last exactly the period and are never
released or renewed: a sliding log of admissions, kept by the Lua scripts (they know a
window's pool by the name :func:`rate_pool` gives it, see ``pools/lua/includes/pool.lua``).

The grammar is strict (no spaces, no leading zeros, no fractions): ``N`` is a whole
number from 1 to :data:`MAX_RATE_COUNT`; the period is a unit ``s``, ``m``, ``h`` or
``d``, optionally after a whole count (``"100/10s"``, ``"500/15m"``), at most
:data:`MAX_PERIOD_MS` long. A list of such strings holds all at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cascade_celery.errors import InvalidConstraint

#: The largest N. Redis keeps one holders entry (and one units field) per admission in
#: the window, about 100 bytes: 100 000 admissions cost ~10 MB per window pool.
MAX_RATE_COUNT = 100_000
#: The longest period: 7 days.
MAX_PERIOD_MS = 7 * 86_400_000
#: The most windows one ``rate`` may list.
MAX_WINDOWS = 8
#: Milliseconds an admission is held beyond its window (includes/pool.lua): the gate
#: admits a task a few ms before its body starts, so the starts the task itself sees
#: never show N + 1 in a period either. It costs 1 % of the rate at a 1 s window.
RATE_GUARD_MS = 10
UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

_COUNT = re.compile(r"[1-9][0-9]*", re.ASCII)
_PERIOD = re.compile(r"([1-9][0-9]*)?([smhd])", re.ASCII)
_POOL_PREFIX = "constraint:rate_limit:"
#: Mirrors ``window_ms`` in pools/lua/includes/pool.lua.
_RATE_POOL = re.compile(r"constraint:rate_limit:.*@([1-9][0-9]*)([smhd])", re.ASCII | re.DOTALL)
_FORMAT = "'<N>/<period>' (e.g. '10/s', '100/10s', '500/15m'; units s, m, h, d)"


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``count`` admissions in any ``period_ms``; ``period`` is its canonical text."""

    period_ms: int
    count: int
    period: str


def parse_rate(value: object) -> tuple[Window, ...]:
    """Parse a ``rate`` param: one string or a non-empty list of them.

    Raises:
        InvalidConstraint: with the reason, if ``value`` is not a valid rate.
    """
    if isinstance(value, str):
        return (_window(value),)
    if not isinstance(value, list):
        msg = f"params.rate must be a string {_FORMAT} or a list of them"
        raise InvalidConstraint(msg)
    if not value:
        msg = "params.rate must not be an empty list"
        raise InvalidConstraint(msg)
    if len(value) > MAX_WINDOWS:
        msg = f"params.rate lists more than {MAX_WINDOWS} windows"
        raise InvalidConstraint(msg)
    windows: dict[int, Window] = {}
    for item in value:
        if not isinstance(item, str):
            msg = f"params.rate list items must be strings {_FORMAT}"
            raise InvalidConstraint(msg)
        window = _window(item)
        twin = windows.setdefault(window.period_ms, window)
        if twin is not window:
            msg = f"params.rate lists two windows of one length: {twin.period!r}, {window.period!r}"
            raise InvalidConstraint(msg)
    return tuple(windows.values())


def _window(text: str) -> Window:
    count, slash, period = text.partition("/")
    if not slash:
        msg = f"rate {text!r} is not {_FORMAT}"
        raise InvalidConstraint(msg)
    if not _COUNT.fullmatch(count):
        msg = f"rate {text!r}: N must be a whole number from 1 to {MAX_RATE_COUNT}"
        raise InvalidConstraint(msg)
    if int(count) > MAX_RATE_COUNT:
        msg = f"rate {text!r}: N is above the maximum, {MAX_RATE_COUNT}"
        raise InvalidConstraint(msg)
    match = _PERIOD.fullmatch(period)
    if not match:
        msg = (
            f"rate {text!r}: the period must be s, m, h or d, optionally after a whole number >= 1"
        )
        raise InvalidConstraint(msg)
    length, unit = int(match.group(1) or 1), match.group(2)
    period_ms = length * UNIT_MS[unit]
    if period_ms > MAX_PERIOD_MS:
        msg = f"rate {text!r}: the period is longer than 7 days"
        raise InvalidConstraint(msg)
    return Window(period_ms, int(count), f"{length}{unit}")


def rate_pool(scope: str, window: Window) -> str:
    """The pool counting admissions of ``scope`` in ``window``, e.g. ``…:task:x@10s``."""
    return f"{_POOL_PREFIX}{scope}@{window.period}"


def window_of_pool(name: str) -> int | None:
    """The window length (ms) of a rate pool (keyed or not); None for any other pool."""
    match = _RATE_POOL.fullmatch(name.partition(" ")[0])
    if match is None:
        return None
    return int(match.group(1)) * UNIT_MS[match.group(2)]


def scope_of_pool(name: str) -> str | None:
    """The scope a rate pool counts (``task:x`` of ``…:task:x@10s``, keyed or not); None
    for others."""
    base = name.partition(" ")[0]
    if _RATE_POOL.fullmatch(base) is None:
        return None
    return base[len(_POOL_PREFIX) : base.rindex("@")]
