"""``cascade constraints``: the active constraints as a table or JSON."""

from __future__ import annotations

import json
import re
import time

from tests.integration.cli.conftest import UTC_TIME, ok


def test_constraints_lists_id_type_scope_params_and_expiry(env: dict[str, str]) -> None:
    ok(env, "pause", "task:shop.charge", "--for", "10m")
    ok(env, "limit", "queue:emails", "3")

    listed = json.loads(ok(env, "constraints", "--json"))

    assert [(c["id"], c["type"], c["scope"], c["params"]) for c in listed] == [
        ("concurrency-queue:emails", "concurrency", "queue:emails", {"limit": 3}),
        ("pause-task:shop.charge", "pause", "task:shop.charge", {}),
    ]
    limit, pause = listed
    assert (limit["expires_at"], limit["expires_at_utc"], limit["expires_in_seconds"]) == (
        None, None, None,
    )  # fmt: skip
    assert re.fullmatch(UTC_TIME, pause["expires_at_utc"])
    assert (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pause["expires_at"]))
        == (pause["expires_at_utc"])
    )
    assert 540 < pause["expires_in_seconds"] <= 600

    table = ok(env, "constraints").splitlines()
    assert table[0].split() == ["ID", "TYPE", "SCOPE", "PARAMS", "EXPIRES"]
    assert table[1].split() == ["concurrency-queue:emails", "concurrency", "queue:emails",
                                "limit=3", "never"]  # fmt: skip
    expiry = rf"{UTC_TIME} \(in (9m\d\ds|10m)\)"
    assert re.fullmatch(
        rf"pause-task:shop\.charge\s+pause\s+task:shop\.charge\s+-\s+{expiry}", table[2]
    ), table[2]


def test_constraints_with_none_active_says_so(env: dict[str, str]) -> None:
    assert ok(env, "constraints") == "no active constraints\n"
    assert json.loads(ok(env, "constraints", "--json")) == []
