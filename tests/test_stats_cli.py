"""``tt stats``: keys, memory and growth per kind and the retention settings, as a user and a
script see them (a real ``tt`` process on a real server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import tt, tt_ok

pytestmark = pytest.mark.e2e

KIND_FIELDS = {"keys", "bytes", "sampled", "keys_per_day", "bytes_per_day"}


def test_tt_stats_shows_keys_memory_growth_and_retention_per_kind(tt_env: dict[str, str]) -> None:
    config = Path(tt_env["TINYTOWN_TOWN"]) / "tinytown.toml"
    config.write_text(config.read_text() + '[retention]\ntasks = "2h"\nmessages = 600\n')
    tt_ok("assign", "conductor", "note to self", env=tt_env)
    backlog = tt_ok("backlog", "add", "a backlog task", env=tt_env)
    tt_ok("task", "cancel", backlog["id"], env=tt_env)

    first = tt_ok("stats", env=tt_env)
    second = tt_ok("stats", "--exact", env=tt_env)

    assert set(first) >= {"town", "now", "kinds", "total", "records", "used_memory", "retention",
                          "growth_since"}
    assert set(first["kinds"]) == {"tasks", "messages", "events", "agents", "indexes", "other"}
    for row in [*first["kinds"].values(), first["total"]]:
        assert set(row) == KIND_FIELDS
        assert isinstance(row["bytes"], int) and (row["bytes"] > 0) == (row["keys"] > 0)
    assert first["kinds"]["tasks"]["keys"] == 2 == first["records"]["tasks"]
    assert first["records"]["finished_tasks"] == 1
    assert first["kinds"]["agents"]["keys"] >= 1 and first["kinds"]["events"]["keys"] == 1
    assert first["total"]["keys"] == sum(k["keys"] for k in first["kinds"].values())
    assert first["retention"] == {"tasks": 7200, "messages": 600, "events": 14 * 86400}
    assert isinstance(first["used_memory"], int) and first["used_memory"] > first["total"]["bytes"]
    assert first["growth_since"] is None
    assert second["growth_since"] == first["now"]
    assert all(row["sampled"] == row["keys"] for row in second["kinds"].values())

    shown = tt("stats", env=tt_env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:3] == ["KIND", "KEYS", "MEMORY"]
    assert any(line.split()[:2] == ["tasks", "2"] for line in lines), shown.stdout
    assert "retention: finished tasks 2h, acknowledged messages 10m, events 14d" in shown.stdout
