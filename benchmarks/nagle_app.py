"""``benchmarks.app`` whose MQTT clients leave Nagle's algorithm on (paho's default).

For the control-latency benchmark's "both ends at their defaults" variant; cascade itself
always sets TCP_NODELAY (``cascade_celery.mqtt.client``).
"""

from __future__ import annotations

from benchmarks.app import app
from benchmarks.nagle import keep_nagle
from cascade_celery.mqtt import client

client._no_delay = keep_nagle  # before the worker makes its MQTT client

__all__ = ["app"]
