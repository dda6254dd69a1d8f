"""Publish constraint changes as retained QoS 1 messages (the CLI's and the API's path)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

from cascade_celery.config import MqttSettings
from cascade_celery.errors import ControlPlaneUnavailable
from cascade_celery.mqtt.client import make_client


def publish_retained(
    settings: MqttSettings,
    messages: Sequence[tuple[str, bytes]],
    *,
    timeout: float | None = None,
) -> None:
    """Publish each (topic, payload) retained with QoS 1 and wait until the broker has it.

    An empty payload clears the topic's retained message (removes the constraint).
    ``timeout`` (default: ``settings.connect_timeout``) bounds the wait for the broker's
    answer to the connect and to each publish. Raise ControlPlaneUnavailable if the
    broker can't be reached, refuses or doesn't answer in time.
    """
    timeout = settings.connect_timeout if timeout is None else timeout
    client = make_client(settings, f"cascade-pub-{uuid.uuid4().hex[:12]}", clean_session=True)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive)
    except OSError as exc:
        raise ControlPlaneUnavailable(
            f"MQTT broker {settings.redacted_url()} is unreachable: {exc}"
        ) from exc
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise ControlPlaneUnavailable(
                f"no answer from {settings.redacted_url()} within {timeout:g} s"
            )
        if outcome["reason"].is_failure:
            raise ControlPlaneUnavailable(
                f"{settings.redacted_url()} refused the connection: {outcome['reason']}"
            )
        infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise ControlPlaneUnavailable(
                    f"{settings.redacted_url()} did not confirm within {timeout:g} s"
                )
    except (RuntimeError, ValueError) as exc:
        url = settings.redacted_url()
        raise ControlPlaneUnavailable(f"publish to {url} failed: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()
