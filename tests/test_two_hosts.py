"""Several machines on one Redis: two town directories (the same town, the same URL in both
``tinytown.toml``) stand for two hosts (``TINYTOWN_HOST``), each starting its own runners in
their own process groups.  One host's runners are SIGKILLed: the other host's live work is
untouched, a ``tt kill`` from host A is carried out by the runner on host B (its round finishes,
its result is kept), and the dead host's task is reclaimed only once its heartbeat is stale."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import clean_env
from lifecycle_support import finished, open_gate, read_line, tt, tt_json, tt_started, write_gated_presets
from runner_support import kill_leftover_runners, wait_for_line

from tinytown.models import TaskState
from tinytown.processes import pid_alive, wait_exit
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

STALE_AFTER_S = 10


@pytest.fixture
def hosts(tmp_path: Path, redis_socket: str, town_name: str) -> Iterator[dict[str, dict[str, str]]]:
    """``{"host-a": env, "host-b": env}``: one town directory per host on one Redis."""
    envs = {}
    for host in ("host-a", "host-b"):
        root = tmp_path / host
        root.mkdir()
        (root / "tinytown.toml").write_text(
            f'name = "{town_name}"\nstale_after_s = {STALE_AFTER_S}\n'
            f'[redis]\nurl = "unix://{redis_socket}"\n'
        )
        write_gated_presets(root)
        env = clean_env()
        env.update(TINYTOWN_TOWN=str(root), TINYTOWN_HOST=host)
        envs[host] = env
    yield envs
    for env in envs.values():
        kill_leftover_runners(Path(env["TINYTOWN_TOWN"]))


def started_round(env: dict[str, str], agent: str, description: str) -> int:
    number = tt_json(env, "assign", agent, description)["number"]
    wait_for_line(Path(env["TINYTOWN_TOWN"]) / ".tt" / "logs" / f"{agent}.round-1.log", "started", 60)
    return int(number)


async def test_a_dead_hosts_runners_never_cost_the_other_host_its_work(
    hosts: dict[str, dict[str, str]],
) -> None:
    a, b = hosts["host-a"], hosts["host-b"]
    ada = tt_json(a, "spawn", "ada", "--cli", "gated")
    bea = tt_json(b, "spawn", "bea", "--cli", "gated")
    ben = tt_json(b, "spawn", "ben", "--cli", "gated")
    ada_task = started_round(a, "ada", "work on host a")
    bea_task = started_round(b, "bea", "work on host b")
    # each runner leads its own process group, and every host's status shows where each runs
    assert all(os.getpgid(x["pid"]) == x["pid"] for x in (ada, bea, ben))
    shown = {v["agent"]["name"]: v["agent"] for v in tt_json(a, "status")["agents"]}
    assert {n: (shown[n]["host"], shown[n]["session_pid"]) for n in ("ada", "bea", "ben")} == {
        "ada": ("host-a", ada["pid"]), "bea": ("host-b", bea["pid"]), "ben": ("host-b", ben["pid"])}
    assert "host-b" in tt(a, "status").stdout

    os.killpg(ada["pid"], signal.SIGKILL)  # host a goes down: its runner and its round
    assert wait_exit(ada["pid"], 30)
    async with await Town.open(Path(b["TINYTOWN_TOWN"])) as town:
        # seen from host b, ada is not known dead yet (its heartbeat is fresh): nothing moves
        early = await town.recover()
        assert early.reclaimed == [] and early.stopped == []
        assert (await town.get_task(f"#{ada_task}")).state == TaskState.RUNNING

        # host a orders bea (on host b) to stop: bea's runner finishes its round itself
        kill = tt_started(a, "kill", "bea")
        assert read_line(kill.stderr) == (
            "waiting for bea's round 1 on host-b to finish (Ctrl-C to stop waiting, --now to interrupt)")
        open_gate(Path(b["TINYTOWN_TOWN"]), "bea")
        code, out, err = finished(kill)
        assert (code, out.strip()) == (0, "stopped bea after its round 1"), err
        kept = await town.get_task(f"#{bea_task}")
        assert (kept.state, kept.result) == (TaskState.COMPLETED, "started\nfinished after the gate opened")
        assert wait_exit(bea["pid"], 30)  # its runner ended by itself
        # ben, live on host b, was never touched
        assert pid_alive(ben["pid"]) and (await town.get_agent("ben")).state.value == "idle"

        # once ada's heartbeat is stale (Redis's clock), recover reclaims its task
        dead = await town.get_agent("ada")
        with anyio.fail_after(60):
            while not (report := await town.recover()).reclaimed:
                await town.wait_events(await town.last_event_id(), 1.0)
        assert report.stopped == ["ada"]
        assert [r["from"] for r in report.reclaimed] == ["ada"]
        assert await town.now_ms() - dead.last_seen > STALE_AFTER_S * 1000
        back = await town.get_task(f"#{ada_task}")
        assert (back.state, back.assigned_to) == (TaskState.PENDING, None)
        assert pid_alive(ben["pid"]) and (await town.get_agent("ben")).state.value == "idle"

        # a restart ordered from host a is carried out on host b: the successor runs there
        restarted = tt_json(a, "restart", "ben")
        assert (restarted["state"], restarted["host"]) == ("idle", "host-b")
        assert restarted["pid"] != ben["pid"] and wait_exit(ben["pid"], 30)
        assert pid_alive(restarted["pid"])
