"""The shop: a Celery app whose tasks are gated by cascade-celery.

Configured from the environment, so ``celery -A example_project.shop worker`` runs as is:
``SHOP_BROKER_URL`` (broker and result backend, default ``redis://localhost:6379/0``),
``CASCADE_REDIS_URL`` (cascade's pools and constraints, default ``redis://localhost:6379/1``),
``CASCADE_LEASE_SECONDS`` (default 30), ``CASCADE_MQTT_URL`` (optional: the MQTT control
plane) and the partner's settings (see example_project/partner.py).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from cascade_celery import Cascade, GatedTask
from example_project.partner import Partner

BROKER_URL = os.environ.get("SHOP_BROKER_URL", "redis://localhost:6379/0")
CASCADE_REDIS_URL = os.environ.get("CASCADE_REDIS_URL", "redis://localhost:6379/1")

app = Celery("shop", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    cascade_redis_url=CASCADE_REDIS_URL,
    cascade_lease_seconds=float(os.environ.get("CASCADE_LEASE_SECONDS", "30")),
    worker_prefetch_multiplier=1,  # a worker takes one message per free process
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
if os.environ.get("CASCADE_MQTT_URL"):
    app.conf.cascade_mqtt_url = os.environ["CASCADE_MQTT_URL"]
cascade = Cascade(app)

_partner: Partner | None = None


def partner() -> Partner:
    """This process's partner client (made on first use, so after fork)."""
    global _partner
    if _partner is None:
        _partner = Partner.from_env()
    return _partner


@app.task(base=GatedTask, name="shop.charge")
def charge(order_id: str) -> str:
    """Charge the customer for an order (a short local step)."""
    time.sleep(0.01)
    return f"charged:{order_id}"


@app.task(base=GatedTask, name="shop.call_partner_api")
def call_partner_api(order_id: str) -> str:
    """Send the order to the fragile partner, which takes at most 3 calls at once."""
    return partner().call(order_id)
