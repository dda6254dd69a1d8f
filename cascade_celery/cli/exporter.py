"""``cascade exporter``: serve cascade's Prometheus metrics over HTTP until stopped."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from celery.bin.base import CeleryCommand, CeleryOption

from cascade_celery.cli.context import cascade_of, confirm, reporting_errors
from cascade_celery.config import redact_url
from cascade_celery.exporter import MAX_POOLS
from cascade_celery.redis_client import client_for


@click.command(cls=CeleryCommand)
@click.option("--port", type=click.IntRange(0, 65535), default=9808, show_default=True,
              cls=CeleryOption, help="TCP port to serve /metrics on.")  # fmt: skip
@click.option("--addr", default="127.0.0.1", show_default=True, cls=CeleryOption,
              help="Address to listen on (0.0.0.0: every interface).")  # fmt: skip
@click.option("--interval", type=click.FloatRange(min=0), default=0.0, show_default=True,
              cls=CeleryOption,
              help="Reuse a reading of Redis younger than this many seconds (0: read at "
                   "every scrape).")  # fmt: skip
@click.option("--max-pools", type=click.IntRange(min=0), default=MAX_POOLS, show_default=True,
              cls=CeleryOption,
              help="Pools with a label of their own (most parked first); the rest are "
                   "summed as pool=\"_other\".")  # fmt: skip
@click.pass_context
def exporter(ctx: click.Context, port: int, addr: str, interval: float, max_pools: int) -> None:
    """Serve Prometheus metrics of the pools and constraints, read from Redis per scrape.

    Per pool: capacity, running units, parked tasks and the oldest wait; the active
    constraints by type; the worker processes reporting the constraint set. Runs until
    Ctrl-C or SIGTERM.
    """
    # Here, not at the top: the other commands should not pay for importing it.
    from prometheus_client import CollectorRegistry, start_http_server

    from cascade_celery.exporter import CascadeCollector

    api = cascade_of(ctx)
    with reporting_errors(ctx):
        client = client_for(api.config, socket_connect_timeout=5.0, socket_timeout=5.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CascadeCollector(client, api.config.redis_prefix, max_pools=max_pools,
                                       interval=interval, handlers=api.handlers))  # fmt: skip
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {addr}:{port}: {exc}") from exc
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    confirm(ctx, f"serving cascade metrics of {redact_url(api.config.redis_url)} "
                 f"on http://{addr}:{server.server_port}/metrics")  # fmt: skip
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass  # Ctrl-C ends it: not an error
    finally:
        server.shutdown()
        thread.join(timeout=5)
        client.close()
