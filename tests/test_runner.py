"""The runner with real processes: ``tt agent run`` started detached by ``spawn`` on the
session's real Redis, presets that are real programs, the scripted agent talking MCP over
stdio.  Waits are on the town's event stream, bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from runner_support import next_event, open_spawn_town, round_done, task_settled, wait_for_line

from tinytown.models import AgentState, MessageKind, TaskDecider, TaskState
from tinytown.processes import lock_holder, lock_path, pid_alive, wait_exit
from tinytown.runner import Runner

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_a_scripted_agent_completes_its_task_through_the_mcp_server(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        agent = await town.spawn_agent("alice", cli="scripted")
        assert agent.state == AgentState.IDLE and agent.pid and agent.cli == "scripted"
        after = await town.channel.last_event_id()
        task = await town.assign("2 + 3 * 4", agent="alice")
        await round_done(town, "alice", after)
        done = await town.get_task(task.id)
        assert done.state == TaskState.COMPLETED
        assert done.result == "2 + 3 * 4 = 14"  # the agent's own report, not the output tail
        assert done.decided_by == TaskDecider.AGENT
        alice = await town.get_agent("alice")
        assert alice.tasks_completed == 1
        assert town.paths is not None
        log = (town.paths.logs / "alice.round-1.log").read_text()
        # the agent spoke; the MCP server's INFO lines went to its own log file, not stderr
        assert "alice: task" in log and "serving" not in log and "INFO" not in log
        assert "serving" in (town.paths.logs / "mcp-alice.log").read_text()
        notices = await town.inbox("conductor")
        assert [(m.kind, m.task_id) for m in notices] == [(MessageKind.TASK_DONE, task.id)]


async def test_a_custom_preset_that_calls_back_through_the_mcp_config_reports_its_own_result(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("bob", cli="callback")
        after = await town.channel.last_event_id()
        task = await town.assign("tiny town", agent="bob")
        done = await task_settled(town, task.id, after)
        assert (done.state, done.result) == (TaskState.COMPLETED, "2 words; reversed: town tiny")


async def test_a_preset_that_cannot_report_has_its_task_completed_by_exit_code_and_marked_so(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("carol", cli="echo")  # reports = false
        after = await town.channel.last_event_id()
        task = await town.assign("say something", agent="carol")
        await round_done(town, "carol", after)
        done = await town.get_task(task.id)
        assert (done.state, done.decided_by) == (TaskState.COMPLETED, TaskDecider.EXIT_CODE)
        root = Path(tt_env["TINYTOWN_TOWN"]).resolve()
        # the round's environment and working directory, as the CLI saw them
        assert f"agent carol task {task.id} cwd {root} mcp True town {root}" in (done.result or "")
        carol = await town.get_agent("carol")
        assert (carol.state, carol.rounds_completed, carol.current_task) == (AgentState.IDLE, 1, None)


async def test_a_cli_that_exits_non_zero_fails_its_task_with_the_output_tail(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("dave", cli="fail")
        after = await town.channel.last_event_id()
        task = await town.assign("build it", agent="dave")
        event = await round_done(town, "dave", after)
        assert event.data["exit_code"] == 3
        done = await town.get_task(task.id)
        assert (done.state, done.decided_by) == (TaskState.FAILED, TaskDecider.RUNNER)
        assert done.error == "fail exited with code 3:\nboom: the build broke"
        assert town.paths is not None  # no follow-up round after a non-zero exit
        assert not (town.paths.logs / "dave.round-1.followup.prompt.md").exists()
        dave = await town.get_agent("dave")
        assert dave.state == AgentState.IDLE and dave.rounds_completed == 1
        assert await town.in_flight("dave") == []


async def test_a_cli_that_exits_zero_without_reporting_is_asked_again_and_then_fails_its_task(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("sid", cli="silent")
        after = await town.channel.last_event_id()
        task = await town.assign("fix the flaky test", agent="sid")
        event = await round_done(town, "sid", after)
        assert event.data["exit_code"] == 0
        done = await town.get_task(task.id)
        assert (done.state, done.decided_by) == (TaskState.FAILED, TaskDecider.RUNNER)
        assert done.error is not None
        assert done.error.startswith(
            "the agent did not report: silent exited 0 without reporting, also after a follow-up "
            "round that asked it to:\n"
        )
        assert done.error.endswith("done, I think")  # the output tail
        sid = await town.get_agent("sid")
        assert (sid.state, sid.rounds_completed, sid.tasks_completed) == (AgentState.IDLE, 1, 0)
        assert await town.in_flight("sid") == []
        notices = await town.inbox("conductor")
        assert [(m.kind, m.task_id) for m in notices] == [(MessageKind.TASK_FAILED, task.id)]

        assert town.paths is not None
        tt = str(Path(sys.executable).parent / "tt")
        followup = (town.paths.logs / "sid.round-1.followup.prompt.md").read_text()
        assert "Report now" in followup
        assert f'task_done(task_id="{task.id}"' in followup  # the exact tool, and command:
        assert f'without MCP, run: {tt} task done {task.id} "<result>"' in followup
        log = (town.paths.logs / "sid.round-1.log").read_text()
        assert log.count("done, I think") == 2  # both runs wrote to the round's log
        assert "--- tinytown: follow-up round" in log and followup in log
        first = (town.paths.logs / "sid.round-1.prompt.md").read_text()
        assert f"{tt} task done <task id>" in first  # tt by absolute path

        runner_log = (town.paths.logs / "sid.runner.log").read_text()
        assert runner_log.count("<prompt ") == 2 and "fix the flaky test" not in runner_log
        assert f"round 1: silent runs {sys.executable} -c " in runner_log
        assert (f"round 1 follow-up: silent runs {sys.executable} -c " in runner_log)
        assert ("round 1: environment set TINYTOWN_AGENT, TINYTOWN_MCP_CONFIG, TINYTOWN_TASK_ID, "
                "TINYTOWN_TOWN") in runner_log


async def test_a_cli_that_reports_in_its_follow_up_round_completes_its_task(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("liv", cli="late")
        after = await town.channel.last_event_id()
        task = await town.assign("update the changelog", agent="liv")
        await round_done(town, "liv", after)
        done = await town.get_task(task.id)
        assert (done.state, done.result, done.decided_by) == (
            TaskState.COMPLETED, "reported when asked", TaskDecider.AGENT)
        assert town.paths is not None
        assert "first round, not reporting" in (town.paths.logs / "liv.round-1.log").read_text()
        liv = await town.get_agent("liv")
        assert (liv.rounds_completed, liv.tasks_completed) == (1, 1)


async def test_kill_now_during_a_follow_up_round_leaves_the_task_to_recover_not_failed(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("sam", cli="stall")
        task = await town.assign("hang on", agent="sam")
        assert town.paths is not None
        child = int(wait_for_line(town.paths.logs / "sam.round-1.log", "pid ", 60).split()[1])
        assert (town.paths.logs / "sam.round-1.followup.prompt.md").is_file()
        killed = await town.kill_agent("sam", now=True, timeout_s=10)
        assert killed.state == AgentState.STOPPED and not pid_alive(child)
        back = await town.get_task(task.id)
        assert (back.state, back.decided_by, back.error) == (TaskState.PENDING, None, None)


async def test_an_info_only_batch_is_acknowledged_without_running_the_cli(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.register_agent("erin", cli="echo", state=AgentState.STARTING)
        await town.send("conductor", "erin", "fyi: the build is green")
        # runs in this process until it has been idle for 0.5 s
        final = await Runner(town, "erin", idle_timeout_s=0.5).run()
        assert final == AgentState.STOPPED
        erin = await town.get_agent("erin")
        assert (erin.state, erin.rounds_completed, erin.pid) == (AgentState.STOPPED, 0, None)
        counts = await town.inbox_counts("erin")
        assert (counts.pending, counts.in_flight) == (0, 0)
        assert town.paths is not None
        assert not list(town.paths.logs.glob("erin.round-*"))


async def test_two_runners_never_run_for_one_agent(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        first = await town.spawn_agent("frank", cli="echo")
        second = subprocess.run(
            [sys.executable, "-m", "tinytown.cli.main", "agent", "run", "frank"],
            check=False, env=tt_env, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"tt: conflict: a runner for agent frank is already running (pid {first.pid}); two "
            "runners never run for one agent. `tt kill` it first, or `tt restart` it"
        )
        frank = await town.get_agent("frank")
        assert (frank.state, frank.pid) == (AgentState.IDLE, first.pid)  # untouched
        assert town.paths is not None
        assert lock_holder(lock_path(town.paths, "frank")) == first.pid


async def test_kill_now_stops_the_process_group_and_recovers_the_round(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        agent = await town.spawn_agent("gina", cli="sleepy")
        after = await town.channel.last_event_id()
        task = await town.assign("sleep on it", agent="gina")
        await next_event(town, after, lambda e: e.type == "task.started")
        assert town.paths is not None
        child = int(wait_for_line(town.paths.logs / "gina.round-1.log", "pid ").split()[1])
        assert pid_alive(child)
        killed = await town.kill_agent("gina", now=True, timeout_s=10)
        assert (killed.state, killed.pid) == (AgentState.STOPPED, None)
        assert agent.pid is not None
        assert not pid_alive(agent.pid) and not pid_alive(child)  # the round's CLI went too
        back = await town.get_task(task.id)
        assert (back.state, back.assigned_to) == (TaskState.PENDING, None)  # back in the backlog
        # its message went with it: a task no longer gina's is never delivered to her
        assert await town.inbox("gina") == [] and await town.in_flight("gina") == []


async def test_kill_lets_the_round_finish_first(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        agent = await town.spawn_agent("hugo", cli="brief")
        after = await town.channel.last_event_id()
        task = await town.assign("take a second", agent="hugo")
        await next_event(town, after, lambda e: e.type == "task.started")
        killed = await town.kill_agent("hugo", timeout_s=20)
        assert killed.state == AgentState.STOPPED
        assert agent.pid is not None and not pid_alive(agent.pid)
        done = await town.get_task(task.id)
        assert (done.state, done.result) == (TaskState.COMPLETED, "finished after a second")


async def test_recover_after_a_runner_is_killed_returns_its_task_and_messages(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        agent = await town.spawn_agent("ivan", cli="sleepy")
        after = await town.channel.last_event_id()
        task = await town.assign("long job", agent="ivan")
        await next_event(town, after, lambda e: e.type == "task.started")
        assert agent.pid is not None and town.paths is not None
        wait_for_line(town.paths.logs / "ivan.round-1.log", "pid ")
        os.killpg(agent.pid, signal.SIGKILL)  # the runner and its round, with no chance to clean up
        assert wait_exit(agent.pid, 10)
        stuck = await town.get_agent("ivan")
        assert stuck.state == AgentState.WORKING  # what the dead runner left behind
        view = next(v for v in (await town.status()).agents if v.agent.name == "ivan")
        assert view.runner_gone  # status does not pass the dead runner off as working

        report = await town.recover()
        assert report.stopped == ["ivan"]
        assert report.requeued == {"ivan": 1}
        assert report.reclaimed == [
            {"task_id": task.id, "task": f"#{task.number}", "from": "ivan", "to": None}]
        ivan = await town.get_agent("ivan")
        assert (ivan.state, ivan.pid, ivan.current_task) == (AgentState.STOPPED, None, None)
        assert not next(v for v in (await town.status()).agents if v.agent.name == "ivan").runner_gone
        back = await town.get_task(task.id)
        assert back.state == TaskState.PENDING
        assert [t.id for t in (await town.list_tasks(state="pending")).tasks] == [task.id]
        # the task's message came back from flight, then went with the task to the backlog
        counts = await town.inbox_counts("ivan")
        assert (counts.pending, counts.in_flight) == (0, 0)


async def test_a_runner_started_by_hand_stops_at_ctrl_c_and_kills_its_round_at_the_second(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.register_agent("kai", cli="sleepy", state=AgentState.STARTING)
        after = await town.channel.last_event_id()
        runner = subprocess.Popen([sys.executable, "-m", "tinytown.cli.main", "agent", "run", "kai"],
                                  env=tt_env, stderr=subprocess.PIPE, text=True)
        try:
            await next_event(town, after, lambda e: e.type == "agent.idle" and e.data["agent"] == "kai")
            task = await town.assign("nap", agent="kai")
            assert town.paths is not None
            child = int(wait_for_line(town.paths.logs / "kai.round-1.log", "pid ").split()[1])
            runner.send_signal(signal.SIGINT)  # stop after this round...
            assert runner.stderr is not None
            seen = ""
            while "stopping after this round" not in seen:  # (two signals at once are one)
                seen += runner.stderr.readline()
                assert runner.poll() is None
            runner.send_signal(signal.SIGINT)  # ...no: now
            _out, err = runner.communicate(timeout=30)
            err = seen + err
        finally:
            if runner.poll() is None:
                runner.kill()
        assert runner.returncode == 0, err
        assert "killing the round's CLI" in err and "round 1 interrupted" in err
        assert not pid_alive(child)
        kai = await town.get_agent("kai")
        assert (kai.state, kai.pid) == (AgentState.STOPPED, None)
        # the interrupted round's task went back to the backlog, not half-reported, and it said so
        back = await town.get_task(task.id)
        assert (back.state, back.assigned_to, back.decided_by) == (TaskState.PENDING, None, None)
        assert f"round 1 was cut off; task #{back.number} back to the backlog" in err
        assert (await town.recover()).reclaimed == []
