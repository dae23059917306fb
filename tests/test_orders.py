"""Lifecycle orders through Redis, driven as a user would: ``tt kill`` (visible wait, ``--now``),
``tt stop``, ``tt down`` (refused while runners live, ``--all``), ``tt reset --force`` with
live runners, and the URL checks that go with several machines."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import clean_env
from lifecycle_support import (
    finished,
    open_gate,
    read_line,
    tt,
    tt_json,
    tt_started,
    write_gated_presets,
)
from runner_support import kill_leftover_runners, wait_for_line

from tinytown.processes import pid_alive, wait_exit

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def gated_env(tt_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``tt_env`` with the test presets and ``gated``; runners left behind are killed."""
    root = Path(tt_env["TINYTOWN_TOWN"])
    write_gated_presets(root)
    yield tt_env
    kill_leftover_runners(root)


def in_round(env: dict[str, str], agent: str, description: str) -> int:
    """Give ``agent`` a task and return its number once the agent's gated round runs it."""
    root = Path(env["TINYTOWN_TOWN"])
    number = tt_json(env, "assign", agent, description)["number"]
    wait_for_line(root / ".tt" / "logs" / f"{agent}.round-1.log", "started", 60)
    return int(number)


def test_tt_kill_waits_visibly_for_the_round_and_says_it_stopped_after_it(
    gated_env: dict[str, str],
) -> None:
    env, root = gated_env, Path(gated_env["TINYTOWN_TOWN"])
    carol = tt_json(env, "spawn", "carol", "--cli", "gated")
    number = in_round(env, "carol", "finish what you started")
    kill = tt_started(env, "kill", "carol")
    line = read_line(kill.stderr)
    assert line == "waiting for carol's round 1 to finish (Ctrl-C to stop waiting, --now to interrupt)"
    assert kill.poll() is None  # it waits for the round, however long
    open_gate(root, "carol")
    code, out, err = finished(kill)
    assert (code, out.strip()) == (0, "stopped carol after its round 1"), err
    task = tt_json(env, "task", "show", f"#{number}")
    assert (task["state"], task["result"]) == ("completed", "started\nfinished after the gate opened")
    assert not pid_alive(carol["pid"])
    assert tt_json(env, "list")["agents"][1]["state"] == "stopped"


def test_ctrl_c_on_tt_kill_stops_only_the_wait_and_the_runner_still_stops_after_its_round(
    gated_env: dict[str, str],
) -> None:
    env, root = gated_env, Path(gated_env["TINYTOWN_TOWN"])
    carol = tt_json(env, "spawn", "carol", "--cli", "gated")
    number = in_round(env, "carol", "finish it anyway")
    kill = tt_started(env, "kill", "carol")
    assert read_line(kill.stderr).startswith("waiting for carol's round 1 to finish")
    kill.send_signal(signal.SIGINT)
    code, _out, err = finished(kill)
    assert (code, err.strip()) == (
        130, "tt: stopped waiting; carol keeps the order and stops after its round")
    assert pid_alive(carol["pid"])
    open_gate(root, "carol")
    assert wait_exit(carol["pid"], 60)
    assert tt_json(env, "task", "show", f"#{number}")["state"] == "completed"
    assert tt_json(env, "list")["agents"][1]["state"] == "stopped"


def test_tt_kill_now_cuts_the_round_off_and_says_which_task_went_back(gated_env: dict[str, str]) -> None:
    env = gated_env
    tt_json(env, "spawn", "carol", "--cli", "gated")
    number = in_round(env, "carol", "never finishes")
    done = tt(env, "kill", "carol", "--now")
    assert (done.returncode, done.stdout.strip()) == (
        0, f"stopped carol; its round 1 was cut off, task #{number} went back to the backlog"), done.stderr
    task = tt_json(env, "task", "show", f"#{number}")
    assert (task["state"], task["assigned_to"]) == ("pending", None)
    # the JSON says the same for scripts
    tt_json(env, "spawn", "dave", "--cli", "gated")
    second = in_round(env, "dave", "also cut off")
    killed = tt_json(env, "kill", "dave", "--now")
    assert (killed["state"], killed["outcome"], killed["round"], killed["returned"]) == (
        "stopped", "cut_off", 1, [second])


def test_tt_stop_stops_every_runner_after_its_round(gated_env: dict[str, str]) -> None:
    env, root = gated_env, Path(gated_env["TINYTOWN_TOWN"])
    idle = tt_json(env, "spawn", "ida", "--cli", "gated")
    busy = tt_json(env, "spawn", "bo", "--cli", "gated")
    number = in_round(env, "bo", "one round")
    stop = tt_started(env, "stop")
    assert read_line(stop.stderr) == (
        "waiting for bo's round 1 to finish (Ctrl-C to stop waiting, --now to interrupt)")
    open_gate(root, "bo")
    code, out, err = finished(stop)
    assert code == 0, err
    assert sorted(out.strip().splitlines()) == ["stopped bo after its round 1", "stopped ida (it was idle)"]
    assert tt_json(env, "task", "show", f"#{number}")["state"] == "completed"
    assert not pid_alive(idle["pid"]) and not pid_alive(busy["pid"])
    assert tt(env, "stop").stdout.strip() == "no runner was running"


def test_tt_down_refuses_while_runners_live_and_down_all_stops_them_first(tmp_path: Path) -> None:
    env = clean_env()  # a managed server in .tt/: down has something to stop
    env["TINYTOWN_TOWN"] = str(tmp_path)
    assert tt(env, "init", "--name", "downtown").returncode == 0
    write_gated_presets(tmp_path)
    try:
        runner = tt_json(env, "spawn", "rex", "--cli", "gated")
        refused = tt(env, "down")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"tt: conflict: runners still live: rex (host {socket.gethostname()}, pid {runner['pid']}); "
            "stop them first (`tt stop`), or `tt down --all` to stop them and then the server")
        assert pid_alive(runner["pid"]) and tt_json(env, "status")["agents"][1]["agent"]["state"] == "idle"
        down = tt(env, "down", "--all")
        assert down.returncode == 0, down.stderr
        assert down.stdout.splitlines() == [
            "stopped rex (it was idle)", "stopped managed Redis of town downtown"]
        assert wait_exit(runner["pid"], 30)
        log = (tmp_path / ".tt" / "logs" / "rex.runner.log").read_text()
        assert "runner of rex stopped after 0 round(s): stop ordered by conductor" in log
        assert "Traceback" not in log
    finally:
        kill_leftover_runners(tmp_path)
        tt(env, "down", "--all", "--now")


def test_tt_reset_force_stops_the_runners_before_it_deletes(gated_env: dict[str, str]) -> None:
    env, root = gated_env, Path(gated_env["TINYTOWN_TOWN"])
    runner = tt_json(env, "spawn", "rita", "--cli", "gated")
    in_round(env, "rita", "thrown away by the reset")
    reset = tt(env, "reset", "--force")
    assert reset.returncode == 0, reset.stderr
    first, last = reset.stdout.splitlines()
    assert first.startswith("stopped rita; its round 1 was cut off, task #1 went back to the backlog")
    assert last.startswith("reset town ")
    assert wait_exit(runner["pid"], 30)
    log = (root / ".tt" / "logs" / "rita.runner.log").read_text()
    assert "ExceptionGroup" not in log and "Traceback" not in log and "crashed" not in log
    assert [a["name"] for a in tt_json(env, "list")["agents"]] == ["conductor"]


def test_tt_init_refuses_a_plain_redis_url_with_several_hosts_at_once(tmp_path: Path) -> None:
    env = clean_env()
    done = tt(env, "init", "--redis-url", "redis://h1:6379,h2:6379/0", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "tt: invalid: tt init --redis-url: 'redis.url': redis://h1:6379,h2:6379/0 names several hosts; "
        "a redis:// URL names one server (for a cluster, any one of its nodes; for Sentinel, "
        "redis+sentinel://h1:26379,h2:26379/SERVICE)")
    assert not (tmp_path / "tinytown.toml").exists()


def test_an_unreachable_external_redis_is_not_answered_with_tt_up(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = clean_env()
    env["TINYTOWN_TOWN"] = str(tmp_path)
    (tmp_path / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "redis://127.0.0.1:{port}/0"\n')
    done = tt(env, "status")
    assert done.returncode == 1
    # where, and why in words, not redis-py's "Error 111 connecting to … Connect call failed (…)"
    assert done.stderr == (f"tt: unavailable: cannot reach Redis at 127.0.0.1:{port} (connection refused); "
                           "is it running?\n")
    assert "tt up" not in done.stderr


def test_a_runner_whose_server_vanishes_without_an_order_gives_up_after_stale_after_s(
    tmp_path: Path,
) -> None:
    env = clean_env()
    env["TINYTOWN_TOWN"] = str(tmp_path)
    assert tt(env, "init", "--name", "gone").returncode == 0
    with (tmp_path / "tinytown.toml").open("a") as config:
        config.write("stale_after_s = 3\n")
    write_gated_presets(tmp_path)
    try:
        server = tt_json(env, "up")["pid"]
        runner = tt_json(env, "spawn", "otto", "--cli", "gated")
        # spawn returns before the runner has opened its session; a server gone before that
        # stops it at once (seen on a loaded machine), which is not what this test is about
        log_path = tmp_path / ".tt" / "logs" / "otto.runner.log"
        deadline = time.monotonic() + 60
        while "runner of otto started" not in (log_path.read_text() if log_path.exists() else ""):
            assert time.monotonic() < deadline, "the runner did not start within 60 s"
            time.sleep(0.02)  # no event to wait on outside the town: bounded readiness probe
        os.kill(server, signal.SIGKILL)  # the server goes, and nobody ordered the runner to stop
        assert wait_exit(runner["pid"], 60)
        log = (tmp_path / ".tt" / "logs" / "otto.runner.log").read_text()
        assert "otto: giving up: Redis has been unreachable for 3 s" in log
        assert "ExceptionGroup" not in log and "Traceback" not in log
    finally:
        kill_leftover_runners(tmp_path)
        tt(env, "down", "--all", "--now")
