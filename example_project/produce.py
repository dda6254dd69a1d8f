"""Send orders to the shop and check what the partner saw.

``python -m example_project.produce [--orders 60] [--interval 0.05] [--limit 3]``
applies the limit, resets the partner's scoreboard, sends each order as the chain
``shop.charge | shop.call_partner_api``, waits for every result and prints a summary;
exit status 0 only if the partner never saw more than ``--limit`` calls at once, every
order was processed exactly once and no call failed. demo.py reuses these pieces.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery import Celery, chain
from celery.result import AsyncResult

from cascade_celery import NotApplied
from example_project.partner import Partner

PARTNER_TASK = "shop.call_partner_api"
PARTNER_SCOPE = f"task:{PARTNER_TASK}"


def order_ids(count: int) -> list[str]:
    """``count`` order ids unique to this run."""
    run = uuid.uuid4().hex[:6]
    return [f"order-{run}-{number:03d}" for number in range(1, count + 1)]


def send_order(app: Celery, order_id: str) -> AsyncResult:
    """Send one order; the result is the partner call's (the chain's last task)."""
    charge = app.signature("shop.charge", args=(order_id,), immutable=True)
    confirm = app.signature(PARTNER_TASK, args=(order_id,), immutable=True)
    return chain(charge, confirm).apply_async()


def wait_for_results(
    results: Sequence[AsyncResult],
    deadline: float,
    *,
    on_tick: Callable[[int], None] | None = None,
    tick: float = 0.5,
) -> list[AsyncResult]:
    """Poll until every result is ready or ``time.monotonic()`` passes ``deadline``.

    ``on_tick(done)`` is called about every ``tick`` seconds. Return the ones not ready.
    """
    pending = list(results)
    next_tick = time.monotonic()
    while pending:
        pending = [result for result in pending if not result.ready()]
        now = time.monotonic()
        if on_tick is not None and now >= next_tick:
            on_tick(len(results) - len(pending))
            next_tick = now + tick
        if not pending or now >= deadline:
            break
        time.sleep(0.05)
    return pending


@dataclass(frozen=True)
class Summary:
    """The outcome of a run."""

    sent: int
    exactly_once: int
    duplicates: int
    peak: int
    overloads: int
    failed: int
    unfinished: int
    elapsed: float
    limit: int

    @classmethod
    def collect(
        cls,
        partner: Partner,
        ids: Sequence[str],
        results: Sequence[AsyncResult],
        unfinished: int,
        elapsed: float,
        limit: int,
    ) -> Summary:
        """Read the partner's scoreboard and the results."""
        stats = partner.stats()
        failed = sum(1 for result in results if result.ready() and not result.successful())
        return cls(
            sent=len(ids),
            exactly_once=partner.exactly_once_among(ids),
            duplicates=stats.duplicates,
            peak=stats.peak,
            overloads=stats.overloads,
            failed=failed,
            unfinished=unfinished,
            elapsed=elapsed,
            limit=limit,
        )

    @property
    def ok(self) -> bool:
        """Peak within the limit, every order exactly once, nothing failed or missing."""
        return (
            self.peak <= self.limit
            and self.exactly_once == self.sent
            and self.duplicates == 0
            and self.overloads == 0
            and self.failed == 0
            and self.unfinished == 0
        )

    def lines(self) -> list[str]:
        """The summary, one line per figure."""
        verdict = "OK" if self.ok else "FAILED"
        return [
            f"orders sent                 {self.sent}",
            f"processed exactly once      {self.exactly_once}/{self.sent}",
            f"duplicates                  {self.duplicates}",
            f"partner peak concurrency    {self.peak} (limit {self.limit})",
            f"partner overload errors     {self.overloads}",
            f"failed / unfinished tasks   {self.failed} / {self.unfinished}",
            f"elapsed                     {self.elapsed:.1f}s",
            f"result                      {verdict}",
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """Apply the limit, send the orders, wait, print the summary."""
    parser = argparse.ArgumentParser(prog="python -m example_project.produce")
    parser.add_argument("--orders", type=int, default=60, help="how many orders (60)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between orders")
    parser.add_argument("--limit", type=int, default=3, help="limit on the partner task (3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    args = parser.parse_args(argv)

    from example_project.shop import app, cascade

    partner = Partner.from_env()
    try:
        # Return once every worker process enforces the limit (workers may still be starting).
        cascade.limit(PARTNER_SCOPE, args.limit, wait=args.timeout)
        partner.reset()
        print(f"limit {PARTNER_SCOPE} {args.limit}; sending {args.orders} orders", flush=True)
        started = time.monotonic()
        ids = order_ids(args.orders)
        results = []
        for order_id in ids:
            results.append(send_order(app, order_id))
            time.sleep(args.interval)

        def progress(done: int) -> None:
            print(f"  {done}/{len(results)} done", flush=True)

        pending = wait_for_results(
            results, time.monotonic() + args.timeout, on_tick=progress, tick=2.0
        )
        summary = Summary.collect(
            partner, ids, results, len(pending), time.monotonic() - started, args.limit
        )
        print("\n".join(summary.lines()), flush=True)
        return 0 if summary.ok else 1
    except NotApplied as exc:
        print(f"the limit is not in force at every worker: {exc}", file=sys.stderr)
        return 1
    finally:
        partner.close()


if __name__ == "__main__":
    sys.exit(main())
