"""``python -m benchmarks.rate_scripts``: which of cascade's scripts a rated backlog runs.

2 prefork workers x 4 under ``rate("task:bench.rate_cascade", "20/s")``, broker and cascade
on one Redis server; after a warm-up, 60 tasks published at once (20 start, 40 park and
are handed off over the next 2 s) while ``MONITOR`` counts each script call (by its SHA)
and each pub/sub announcement. Prints the counts per task handed off. MONITOR slows Redis
down: read the counts, not the times.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time

from benchmarks import rate
from benchmarks.cluster import cluster
from cascade_celery import Cascade
from cascade_celery.pools.scripts import SOURCES


def main(n: int = 60, per_window: int = 20) -> dict[str, int]:
    """Count script calls and announcements during a burst of ``n`` rated tasks."""
    shas = {hashlib.sha1(src.encode(), usedforsecurity=False).hexdigest(): name
            for name, src in SOURCES.items()}  # fmt: skip
    counts: collections.Counter[str] = collections.Counter()
    with cluster(shared=True) as (c, app):
        c.start_workers(2, concurrency=4, app_module="benchmarks.rate_app")
        Cascade.for_app(app).rate("task:bench.rate_cascade", f"{per_window}/s", wait=30)
        rate.burst(c, app, "bench.rate_cascade", per_window + 10, 0.001)  # warm-up
        time.sleep(1.3)
        stop = threading.Event()

        def monitor() -> None:
            with c.broker.client().monitor() as stream:
                for command in stream.listen():
                    if stop.is_set():
                        return
                    parts = command["command"].split()
                    if parts and parts[0].upper() == "EVALSHA":
                        counts[shas.get(parts[1].strip('"'), "other script")] += 1
                    elif parts and parts[0].upper() == "PUBLISH":
                        counts["publish " + parts[1].strip('"').rsplit(":", 2)[-2:][0]
                               + ":" + parts[1].strip('"').rsplit(":", 1)[-1]] += 1  # fmt: skip

        thread = threading.Thread(target=monitor, daemon=True)
        thread.start()
        time.sleep(0.5)
        rate.burst(c, app, "bench.rate_cascade", n, 0.001)
        time.sleep(0.3)
        stop.set()
        app.send_task("bench.rate_cascade", args=(-1, 0))  # one more command ends listen()
        thread.join(timeout=5)
    handed_off = n - per_window
    print(f"{n} tasks, {handed_off} handed off; calls (per task handed off):")
    for name, count in counts.most_common():
        print(f"  {name:32s} {count:5d}  ({count / handed_off:.1f})")
    return dict(counts)


if __name__ == "__main__":
    main()
