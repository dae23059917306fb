"""Gemini CLI, released (``@google/gemini-cli``, pinned in agent_clis.py), end to end against
a scripted Gemini API on 127.0.0.1 (``fake_models.gemini``).

Every test gives Gemini a fresh ``HOME`` whose ``~/.gemini/settings.json`` is "the user's
own": API-key auth, no telemetry, no auto-update.  Gemini has never seen the town folder
(no trusted folders), and the town is not a git repository.  The request log of the
scripted model is the evidence of what Gemini offered and passed back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_clis import GEMINI_CLI, InstalledCli, npm_cli
from fake_models.gemini import conversation_requests, gemini_server, tool_names
from fake_models.scripts import attached_session, identify_and_report_round_task, report_round_task
from fake_models.server import Script, Step, ToolCall, Turn
from runner_support import next_event, open_spawn_town, task_settled

from tinytown.errors import NotFound
from tinytown.models import TaskState

pytestmark = [pytest.mark.agent_cli, pytest.mark.anyio]

USER_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
}
GEMINI_RUN_S = float(os.environ.get("TT_TEST_GEMINI_RUN_S", "240"))


@pytest.fixture(scope="module")
def gemini() -> InstalledCli:
    return npm_cli(GEMINI_CLI)


@pytest.fixture
def user_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / ".gemini").mkdir()
    (home / ".gemini" / "settings.json").write_text(json.dumps(USER_SETTINGS, indent=2))
    return home


def gemini_env(tt_env: dict[str, str], home: Path, gemini: InstalledCli, model_url: str) -> dict[str, str]:
    """The town's environment plus what Gemini needs: its binary on PATH (as the preset
    finds it), the user's HOME and the scripted API."""
    return {
        **tt_env, "HOME": str(home),
        "PATH": os.pathsep.join([str(gemini.bin_dir), str(Path(sys.executable).parent), tt_env["PATH"]]),
        "GOOGLE_GEMINI_BASE_URL": model_url, "GEMINI_API_KEY": "fake-key",
    }


def trusting(env: dict[str, str]) -> dict[str, str]:
    """How a user runs headless Gemini in a folder it has not trusted yet (``--skip-trust``
    would not do: Gemini CLI 0.61 applies it after reading the project's settings)."""
    return {**env, "GEMINI_CLI_TRUST_WORKSPACE": "true"}


def tt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@contextmanager
def started(argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A CLI in a process group of its own, killed with everything it started at the end (its
    output is printed then: pytest shows it when the test fails)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(ValueError):  # exited() read it already
            print(f"--- {argv[0]} output ---\n{proc.communicate(timeout=30)[0]}")


async def exited(proc: subprocess.Popen[str], timeout_s: float = GEMINI_RUN_S) -> tuple[int, str]:
    out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=timeout_s))
    return proc.returncode, out


def calls(request: dict[str, Any]) -> list[str]:
    """Names of the function calls in a request's conversation, in order."""
    return [p["functionCall"]["name"] for c in request["contents"] for p in c.get("parts", [])
            if "functionCall" in p]


def attach_config(tt_env: dict[str, str], agent: str) -> dict[str, Any]:
    """``tt mcp config --client gemini`` pasted into the town's ``.gemini/settings.json``."""
    shown = tt("mcp", "config", "--client", "gemini", "--agent", agent, env=tt_env)
    assert shown.returncode == 0, shown.stderr
    assert ".gemini/settings.json" in shown.stderr
    root = Path(tt_env["TINYTOWN_TOWN"])
    (root / ".gemini").mkdir(exist_ok=True)
    (root / ".gemini" / "settings.json").write_text(shown.stdout)
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


def not_a_git_repository(root: Path) -> bool:
    probe = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-dir"], capture_output=True,
                           check=False)
    return probe.returncode != 0


async def test_an_attached_gemini_session_configured_by_tt_mcp_config_receives_and_reports_a_task(
    tt_env: dict[str, str], user_home: Path, gemini: InstalledCli
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    entry = attach_config(tt_env, "alice")["mcpServers"]["tinytown"]
    assert entry["trust"] is True and entry["timeout"] > 300_000
    async with open_spawn_town(tt_env) as town:
        after = await town.last_event_id()
        with gemini_server(attached_session(receive_timeout_s=60)) as model:
            env = trusting(gemini_env(tt_env, user_home, gemini, model.url))
            # Not --yolo: the trusted server entry is what lets headless Gemini run tinytown tools.
            with started(["gemini", "-p", "Work on your Tinytown tasks."], root, env) as proc:
                await next_event(town, after, lambda e: e.type == "agent.registered"
                                 and e.data.get("agent") == "alice", GEMINI_RUN_S)
                task = await town.assign("write the release notes", agent="alice")
                done = await task_settled(town, task.id, after, GEMINI_RUN_S)
                code, out = await exited(proc)
                alice = await town.get_agent("alice")
    assert code == 0, out
    assert done.state == TaskState.COMPLETED and done.result == "done by the scripted model"
    assert done.assigned_to == alice.id
    turns = conversation_requests(model)
    assert "mcp_tinytown_receive" in tool_names(turns[0]), tool_names(turns[0])  # offered from the start
    assert calls(turns[-1]) == ["mcp_tinytown_whoami", "mcp_tinytown_receive", "mcp_tinytown_task_done"]
    assert model.errors == []


async def test_a_receive_that_waits_70_seconds_in_gemini_returns_the_message(
    tt_env: dict[str, str], user_home: Path, gemini: InstalledCli
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    attach_config(tt_env, "alice")
    brain = attached_session(receive_timeout_s=150)
    seen: dict[str, float] = {}

    def timed(turn: Turn) -> Step:
        if turn.results_of("receive") and "result" not in seen:
            seen["result"] = time.monotonic()
        step = brain(turn)
        if isinstance(step, ToolCall) and step.name.endswith("receive") and "call" not in seen:
            seen["call"] = time.monotonic()
        return step

    async with open_spawn_town(tt_env) as town:
        after = await town.last_event_id()
        with gemini_server(timed) as model:
            env = trusting(gemini_env(tt_env, user_home, gemini, model.url))
            with started(["gemini", "-p", "Wait for your Tinytown task."], root, env) as proc:
                with anyio.fail_after(GEMINI_RUN_S):
                    while "call" not in seen:  # the scripted model answered `receive`: a thread's flag
                        await anyio.sleep(0.2)
                await anyio.sleep(70)  # the wait under test, not a synchronisation
                task = await town.assign("the message after a long wait", agent="alice")
                done = await task_settled(town, task.id, after, GEMINI_RUN_S)
                code, out = await exited(proc)
    assert code == 0, out
    assert seen["result"] - seen["call"] >= 70
    receives = [t for t in conversation_requests(model) if calls(t).count("mcp_tinytown_receive") == 1]
    first_result = next(p["functionResponse"] for c in receives[-1]["contents"] for p in c["parts"]
                        if p.get("functionResponse", {}).get("name") == "mcp_tinytown_receive")
    assert task.id in first_result["response"]["output"]
    assert done.state == TaskState.COMPLETED


async def spawn_and_report(tt_env: dict[str, str], user_home: Path, gemini: InstalledCli,
                           agent: str, script: Script | None = None) -> tuple[Any, Any, str]:
    """``tt spawn AGENT --cli gemini``, a task for it, and the task once settled; the model
    asks whoami and reports, unless ``script`` says otherwise."""
    root = Path(tt_env["TINYTOWN_TOWN"])
    with gemini_server(script or identify_and_report_round_task()) as model:
        env = gemini_env(tt_env, user_home, gemini, model.url)
        async with open_spawn_town(env) as town:
            spawned = tt("spawn", agent, "--cli", "gemini", env=env)
            assert spawned.returncode == 0, spawned.stdout + spawned.stderr
            after = await town.last_event_id()
            task = await town.assign("add a changelog entry", agent=agent)
            done = await task_settled(town, task.id, after, GEMINI_RUN_S)
            round_event = await next_event(town, after, lambda e: e.type == "agent.round"
                                           and e.data.get("agent") == agent, GEMINI_RUN_S)
            killed = tt("kill", agent, env=env)
            assert killed.returncode == 0, killed.stderr
            with pytest.raises(NotFound):
                await town.get_agent("alice")  # no session ever spoke as the attached identity
    log = (root / ".tt" / "logs" / f"{agent}.round-1.log").read_text()
    assert round_event.data.get("exit_code") == 0, log
    assert model.errors == []
    return done, model, log


async def test_a_spawned_gemini_agent_reports_its_own_task_in_a_folder_gemini_never_saw(
    tt_env: dict[str, str], user_home: Path, gemini: InstalledCli
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    assert not_a_git_repository(root) and not (user_home / ".gemini" / "trustedFolders.json").exists()
    before = (user_home / ".gemini" / "settings.json").read_text()
    done, model, _log = await spawn_and_report(tt_env, user_home, gemini, "worker")
    assert done.state == TaskState.COMPLETED and done.result == "reported by worker"
    turns = conversation_requests(model)
    assert {"mcp_tinytown_task_done", "run_shell_command"} <= set(tool_names(turns[0]))
    assert f"task id: {done.id}" in json.dumps(turns[0]["contents"])  # the round prompt, from stdin
    assert calls(turns[-1]) == ["mcp_tinytown_whoami", "mcp_tinytown_task_done"]
    # The user's own settings are read, never written; the agent's private copy adds the server.
    assert (user_home / ".gemini" / "settings.json").read_text() == before
    private = json.loads((root / ".tt" / "gemini" / "worker" / ".gemini" / "settings.json").read_text())
    assert private["security"] == USER_SETTINGS["security"]
    assert private["mcpServers"]["tinytown"]["args"][-2:] == ["--agent", "worker"]


async def test_a_spawned_gemini_agent_is_itself_even_where_the_project_settings_attach_someone_else(
    tt_env: dict[str, str], user_home: Path, gemini: InstalledCli
) -> None:
    # A human attached Gemini in the town folder as alice (the project's .gemini/settings.json,
    # which Gemini puts over the round's own settings); the spawned worker must stay worker.
    entry = attach_config(tt_env, "alice")["mcpServers"]["tinytown"]
    assert entry["args"][-2:] == ["--agent", "${TINYTOWN_AGENT:-alice}"]
    done, model, log = await spawn_and_report(tt_env, user_home, gemini, "worker")
    assert done.state == TaskState.COMPLETED and done.result == "reported by worker"
    whoami = next(p["functionResponse"]["response"]["output"] for t in conversation_requests(model)
                  for c in t["contents"] for p in c["parts"]
                  if p.get("functionResponse", {}).get("name") == "mcp_tinytown_whoami")
    assert '"name":"worker"' in whoami.replace(" ", "") and "alice" not in whoami
    assert "alice" not in log


async def test_a_spawned_gemini_agent_runs_shell_commands_without_a_prompt(
    tt_env: dict[str, str], user_home: Path, gemini: InstalledCli
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    shell = ToolCall("run_shell_command", {"command": "git --version > ran.txt && echo shell-ran"})
    done, model, _log = await spawn_and_report(
        tt_env, user_home, gemini, "worker", report_round_task("ran the shell", first=[shell]))
    assert done.state == TaskState.COMPLETED and done.decided_by == "agent"
    assert (root / "ran.txt").read_text().startswith("git version")  # the command really ran
    assert "shell-ran" in (done.result or "")  # and its output came back to the model
    assert calls(conversation_requests(model)[-1]) == ["run_shell_command", "mcp_tinytown_task_done"]
