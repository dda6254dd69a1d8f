"""How ``cascade status`` lays out a family of per-key pools and a fair line (pure rendering)."""

from __future__ import annotations

import json

from cascade_celery.cli.render import status_frame
from cascade_celery.status import FairLine, FairValue, PoolStatus

FAMILY = "constraint:concurrency:task:reports.build kwarg:tenant"
GOVERNED = ("concurrency-task:reports.build",)


def value_pool(value: str, capacity: int, running: int, parked: int) -> PoolStatus:
    return PoolStatus(f"{FAMILY}={value}", capacity, running, parked, 1.5 if parked else None,
                      GOVERNED, key="kwarg:tenant", value=value)  # fmt: skip


def pools() -> list[PoolStatus]:
    values = (value_pool("acme", 10, 10, 40), value_pool("beta", 2, 2, 3))
    family = PoolStatus(FAMILY, 2, 14, 43, 3.0, GOVERNED, key="kwarg:tenant", live_values=4,
                        values=values)  # fmt: skip
    fair = PoolStatus(
        "constraint:concurrency:queue:emails",
        4,
        4,
        9,
        2.0,
        ("concurrency-queue:emails",),
        fair=FairLine("kwarg:tenant", 3, (FairValue("acme", 5), FairValue("", 3))),
    )
    return [family, fair]


def test_a_family_row_its_values_below_it_and_the_fair_lines_after_the_table() -> None:
    text = status_frame([], pools(), 1, {}, 0.0, as_json=False, show_all=False, pretty=True)

    rows = [line.split("  ") for line in text.splitlines()[1:6]]
    assert [[cell.strip() for cell in row if cell.strip()] for row in rows] == [
        [FAMILY, "2 per kwarg:tenant", "14", "43", "3s", "concurrency-task:reports.build"],
        ["kwarg:tenant=acme", "10", "10", "40", "1.5s"],
        ["kwarg:tenant=beta", "2", "2", "3", "1.5s"],
        ["(+2 more values; --top, --key)"],
        ["constraint:concurrency:queue:emails", "4", "4", "9", "2s", "concurrency-queue:emails"],
    ]
    assert text.splitlines()[6:9] == [
        "",
        "fair lines (waiting per value, most first):",
        '  constraint:concurrency:queue:emails  by kwarg:tenant, 3 values in turn: "acme" 5, "" 3',
    ]


def test_the_json_of_a_family_and_a_fair_pool() -> None:
    text = status_frame([], pools(), 1, {}, 0.0, as_json=True, show_all=False, pretty=False)

    family, fair = json.loads(text)["pools"]
    assert (family["key"], family["live_values"], "value" in family) == ("kwarg:tenant", 4, False)
    assert [(v["value"], v["key"], v["parked"]) for v in family["values"]] == [
        ("acme", "kwarg:tenant", 40), ("beta", "kwarg:tenant", 3),
    ]  # fmt: skip
    top = [{"value": "acme", "waiting": 5}, {"value": "", "waiting": 3}]
    assert fair["fair"] == {"key": "kwarg:tenant", "values": 3, "top": top}
    assert "key" not in fair
    assert "values" not in fair
