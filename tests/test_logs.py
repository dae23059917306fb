"""``tt logs AGENT [-f] [--round N]``: round output, and round logs are never overwritten
(a runner restarted after a crash mid-round continues the numbering)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from runner_support import next_event, open_spawn_town, wait_for_line
from test_cli import LineReader, one_error_line, tt, tt_ok

from tinytown.config import TownPaths
from tinytown.processes import next_round_number, round_logs, wait_exit

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def test_next_round_comes_after_every_counted_round_and_every_log_on_disk(tmp_path: Path) -> None:
    paths = TownPaths(tmp_path)
    paths.logs.mkdir(parents=True)
    assert next_round_number(paths, "ivy", 0) == 1
    for name in ("ivy.round-1.log", "ivy.round-3.log", "ivy.round-3.prompt.md", "ivyx.round-9.log"):
        (paths.logs / name).write_text("x")
    assert list(round_logs(paths, "ivy")) == [1, 3]
    assert next_round_number(paths, "ivy", 1) == 4  # round 3 crashed before it was counted
    assert next_round_number(paths, "ivy", 7) == 8


async def test_tt_logs_shows_rounds_follows_them_and_a_crashed_rounds_log_survives_the_restart(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        assert town.paths is not None
        logs = town.paths.logs
        agent = await town.spawn_agent("ivy", cli="sleepy")
        not_yet = one_error_line(tt("logs", "ivy", env=tt_env), "tt: not_found: ")
        assert "ivy has not run a round yet" in not_yet
        one_error_line(tt("logs", "nobody", env=tt_env), "tt: not_found: ")

        follower = subprocess.Popen(
            [sys.executable, "-m", "tinytown.cli.main", "logs", "ivy", "--follow"],
            env=tt_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        as_json = subprocess.Popen(  # one JSON line per piece of output (was an AssertionError)
            [sys.executable, "-m", "tinytown.cli.main", "logs", "ivy", "--follow", "--json"],
            env=tt_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            reader = LineReader(follower)
            json_reader = LineReader(as_json)
            after = await town.channel.last_event_id()
            await town.assign("sleep on it", agent="ivy")
            await next_event(town, after, lambda e: e.type == "task.started")
            first_pid = wait_for_line(logs / "ivy.round-1.log", "pid ")
            assert reader.line(30).startswith("=== ivy round 1 (")
            assert reader.line(30) == first_pid
            piece = json.loads(json_reader.line(30))
            assert (piece["agent"], piece["round"], piece["text"]) == ("ivy", 1, first_pid + "\n")
            assert piece["path"] == str(logs / "ivy.round-1.log")

            assert agent.pid is not None
            os.killpg(agent.pid, signal.SIGKILL)  # the runner dies mid-round, its round with it
            assert wait_exit(agent.pid, 10)
            await town.restart_agent("ivy")  # its task went back to the backlog: give it another
            await town.assign("sleep again", agent="ivy")
            second_pid = wait_for_line(logs / "ivy.round-2.log", "pid ", 60)
            assert reader.line(30).startswith("=== ivy round 2 (")
            assert reader.line(30) == second_pid
            piece = json.loads(json_reader.line(30))
            assert (piece["round"], piece["text"]) == (2, second_pid + "\n")
        finally:
            for process in (follower, as_json):
                process.kill()
                process.wait()

        assert second_pid != first_pid
        assert (logs / "ivy.round-1.log").read_text().strip() == first_pid  # not overwritten
        newest = tt("logs", "ivy", env=tt_env)
        assert newest.returncode == 0 and newest.stdout.splitlines()[1:] == [second_pid]
        older = tt_ok("logs", "ivy", "--round", "1", env=tt_env)
        assert (older["round"], older["text"].strip(), older["rounds"]) == (1, first_pid, [1, 2])
        one_error_line(tt("logs", "ivy", "--round", "7", env=tt_env), "tt: not_found: ")
        await town.kill_agent("ivy", now=True, timeout_s=10)
