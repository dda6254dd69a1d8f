"""Leave Nagle's algorithm on in the MQTT clients cascade makes, to measure what it costs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cascade_celery.mqtt import client


def keep_nagle(*_: Any) -> None:
    """Stands in for the hook that sets TCP_NODELAY on a client's socket: does nothing."""


@contextmanager
def clients_keep_nagle() -> Iterator[None]:
    """Within: clients made by ``cascade_celery.mqtt.client`` don't set TCP_NODELAY."""
    original, client._no_delay = client._no_delay, keep_nagle
    try:
        yield
    finally:
        client._no_delay = original
