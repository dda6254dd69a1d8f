"""A simulated fragile partner API that keeps score in Redis.

Each call counts itself in flight (tracking the peak), takes ``PARTNER_LATENCY`` seconds
(default 0.05), and fails with ``PartnerOverloaded`` when more than
``PARTNER_MAX_IN_FLIGHT`` (default 3) calls are in flight at once. Every order it
processes goes into a Redis SET; processing an order already in it counts a duplicate
(and puts the order in a second SET).
So the summary can prove "never more than 3 at once" and "every order exactly once".

Environment: ``PARTNER_REDIS_URL`` (default: ``SHOP_BROKER_URL``, else
``redis://localhost:6379/0``), ``PARTNER_MAX_IN_FLIGHT``, ``PARTNER_LATENCY``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis

KEY_PREFIX = "partner"
IN_FLIGHT = f"{KEY_PREFIX}:in_flight"
PEAK = f"{KEY_PREFIX}:peak"
OVERLOADS = f"{KEY_PREFIX}:overloads"
PROCESSED = f"{KEY_PREFIX}:processed"
DUPLICATES = f"{KEY_PREFIX}:duplicates"
DUPLICATED = f"{KEY_PREFIX}:duplicated"
ALL_KEYS = (IN_FLIGHT, PEAK, OVERLOADS, PROCESSED, DUPLICATES, DUPLICATED)

# Count one more call in flight and raise the recorded peak, atomically.
_ENTER = (Path(__file__).parent / "partner_enter.lua").read_text()


class PartnerOverloaded(Exception):
    """The partner had more calls in flight than it can take."""


@dataclass(frozen=True)
class PartnerStats:
    """What the partner saw."""

    in_flight: int
    peak: int
    overloads: int
    processed: int
    duplicates: int


class Partner:
    """The partner API, its scoreboard kept in one Redis database."""

    def __init__(self, redis_url: str, *, max_in_flight: int = 3, latency: float = 0.05) -> None:
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10)
        self.max_in_flight = max_in_flight
        self.latency = latency
        self._enter = self.redis.register_script(_ENTER)

    @classmethod
    def from_env(cls) -> Partner:
        """The partner configured from the environment (see the module docstring)."""
        url = os.environ.get("PARTNER_REDIS_URL") or os.environ.get(
            "SHOP_BROKER_URL", "redis://localhost:6379/0"
        )
        return cls(
            url,
            max_in_flight=int(os.environ.get("PARTNER_MAX_IN_FLIGHT", "3")),
            latency=float(os.environ.get("PARTNER_LATENCY", "0.05")),
        )

    def call(self, order_id: str) -> str:
        """Process ``order_id``; raise PartnerOverloaded if too many calls are in flight."""
        in_flight = int(self._enter(keys=[IN_FLIGHT, PEAK]))
        try:
            if in_flight > self.max_in_flight:
                self.redis.incr(OVERLOADS)
                raise PartnerOverloaded(
                    f"{in_flight} calls in flight, the partner takes {self.max_in_flight}"
                )
            time.sleep(self.latency)
            if not self.redis.sadd(PROCESSED, order_id):
                self.redis.incr(DUPLICATES)
                self.redis.sadd(DUPLICATED, order_id)
            return f"confirmed:{order_id}"
        finally:
            self.redis.decr(IN_FLIGHT)

    def stats(self) -> PartnerStats:
        """The scoreboard now."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(IN_FLIGHT)
            pipe.get(PEAK)
            pipe.get(OVERLOADS)
            pipe.scard(PROCESSED)
            pipe.get(DUPLICATES)
            values = pipe.execute()
        return PartnerStats(*(int(value or 0) for value in values))

    def exactly_once_among(self, order_ids: Iterable[str]) -> int:
        """How many of ``order_ids`` the partner processed exactly once."""
        ids = list(order_ids)
        if not ids:
            return 0
        processed = self.redis.smismember(PROCESSED, ids)
        duplicated = self.redis.smismember(DUPLICATED, ids)
        return sum(
            1 for done, again in zip(processed, duplicated, strict=True) if done and not again
        )

    def reset(self) -> None:
        """Clear the scoreboard (before a run)."""
        self.redis.delete(*ALL_KEYS)

    def close(self) -> None:
        """Close the Redis connection."""
        self.redis.close()
