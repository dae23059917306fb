"""Claude Code, the released CLI, end to end against a scripted Anthropic Messages API.

Claude Code (``npm_cli(CLAUDE_CODE)``, pinned) runs as a real subprocess in a town on the
session's private redis-server, with a private ``HOME`` and ``ANTHROPIC_BASE_URL`` pointing
at :mod:`fake_models.anthropic`.  The model is the only fake: the MCP server, ``tt``, the
runner and Claude Code itself are the real programs.  The scripted model's request log is
the evidence of what Claude Code offered the model and passed back; Claude Code's own
debug log (``--debug-file``) is read for MCP protocol complaints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from agent_clis import CLAUDE_CODE, InstalledCli, npm_cli
from fake_models.anthropic import anthropic_server, conversation_requests, turn_of
from fake_models.scripts import attached_session, receive_once, report_round_task
from fake_models.server import FakeModelServer, ToolCall, Turn
from runner_support import kill_leftover_runners

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLI_TIMEOUT_S = 240
TINYTOWN_TOOLS = {"mcp__tinytown__whoami", "mcp__tinytown__receive", "mcp__tinytown__task_done"}
PROTOCOL_COMPLAINTS = ("unknown token", "Connection dropped", "connection dropped")

pytestmark = [pytest.mark.agent_cli]


@pytest.fixture(scope="module")
def claude() -> InstalledCli:
    return npm_cli(CLAUDE_CODE)


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private HOME: no user settings, credentials or MCP servers of the machine."""
    return tmp_path_factory.mktemp("claude-home")


def claude_env(
    tt_env: dict[str, str], cli: InstalledCli, model: FakeModelServer, home: Path
) -> dict[str, str]:
    """The town's environment for Claude Code: offline, quiet, talking to the scripted model,
    with ``claude`` and this installation's ``tt`` on PATH, its debug log in ``home``."""
    env = {k: v for k, v in tt_env.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "MCP_"))}
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(cli.bin_dir), str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")]),
        ANTHROPIC_BASE_URL=model.url,
        ANTHROPIC_API_KEY="sk-ant-scripted",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        # the debug log of a spawned agent's rounds (for the others, --debug-file): a file path
        DEBUG="1",
        CLAUDE_CODE_DEBUG_LOGS_DIR=str(home / "claude-debug.log"),
    )
    return env


def tt(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env,
                          cwd=env["TINYTOWN_TOWN"], capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert proc.returncode == 0, f"tt {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def tt_json(*args: str, env: dict[str, str]) -> Any:
    return json.loads(tt(*args, "--json", env=env).stdout)


@contextmanager
def started(argv: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """Claude Code in its own process group, killed with everything it started afterwards."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    failed = True
    try:
        yield proc
        failed = False
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=30)
        if failed:  # the test's assertion comes with what Claude Code printed
            sys.stderr.write(f"claude (exit {proc.returncode}) stdout:\n{out[-3000:]}\n"
                             f"stderr:\n{err[-3000:]}\n")


def finish(proc: subprocess.Popen[str], timeout_s: float = CLI_TIMEOUT_S) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"claude exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    return out, err


def poll_until(check: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    """A child's progress has no event to wait on here: a bounded probe, generous under load."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def attached_argv(cli: InstalledCli, prompt: str, debug_log: Path) -> list[str]:
    """Headless Claude Code in the town directory, as the README's "Claude Code" section runs it."""
    return [str(cli.binary), "-p", prompt, "--allowedTools", "mcp__tinytown", "--debug-file", str(debug_log)]


def headless_env(env: dict[str, str]) -> dict[str, str]:
    """The README's headless settings: the first model turn waits for the MCP servers."""
    return {**env, "MCP_CONNECTION_NONBLOCKING": "0", "MCP_CONNECT_TIMEOUT_MS": "60000"}


def results_of(model: FakeModelServer, bare: str) -> list[Any]:
    """Parsed results of a tinytown tool in the last conversation request (the full history)."""
    requests = conversation_requests(model)
    assert requests, f"the scripted model got no conversation request: {model.requests!r}"
    turn: Turn = turn_of(requests[-1])
    return [r.json() if r.json() is not None else r.text for r in turn.results_of(bare)]


def assert_no_protocol_complaints(debug_log: Path) -> None:
    text = debug_log.read_text(errors="replace") if debug_log.exists() else ""
    bad = [line for line in text.splitlines() if any(c in line for c in PROTOCOL_COMPLAINTS)]
    assert not bad, "Claude Code complained about the MCP connection:\n" + "\n".join(bad[:10])


def write_attached_config(tt_env: dict[str, str], agent: str) -> Path:
    """``tt mcp config --client claude`` output, saved where Claude Code reads it: ``.mcp.json``."""
    town = Path(tt_env["TINYTOWN_TOWN"])
    text = tt("mcp", "config", "--client", "claude", "--agent", agent, env=tt_env).stdout
    (town / ".mcp.json").write_text(text)
    return town / ".mcp.json"


# ------------------------------------------------------------------ attached sessions


def test_an_attached_session_from_tt_mcp_config_does_whoami_receive_and_task_done(
    claude: InstalledCli, tt_env: dict[str, str], home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    town = Path(tt_env["TINYTOWN_TOWN"])
    entry = json.loads(write_attached_config(tt_env, "alice").read_text())["mcpServers"]["tinytown"]
    assert entry["timeout"] > 300_000 and entry["alwaysLoad"] is True
    debug_log = tmp_path_factory.mktemp("claude-debug") / "debug.log"
    with anthropic_server(attached_session(receive_timeout_s=120)) as model:
        env = headless_env(claude_env(tt_env, claude, model, home))
        with started(attached_argv(claude, "Work on your Tinytown tasks.", debug_log), env, town) as proc:
            # whoami answered: the session is registered; now the conductor assigns it a task
            poll_until(lambda: results_of_safe(model, "whoami"), "the model to see whoami's result")
            task = tt_json("assign", "alice", "Write the changelog entry", env=tt_env)
            out, _err = finish(proc)
    first = conversation_requests(model)[0]
    offered = {t["name"] for t in first["tools"]}
    assert TINYTOWN_TOOLS <= offered, f"first model request lacked tinytown tools: {sorted(offered)}"
    assert "WaitForMcpServers" not in offered
    [me] = results_of(model, "whoami")
    assert me["agent"]["name"] == "alice"
    received = [m for r in results_of(model, "receive") for m in r["messages"]]
    assert [m["task_id"] for m in received] == [task["id"]]
    assert received[0]["from"] == "conductor"
    [done] = results_of(model, "task_done")
    assert done["task"]["state"] == "completed"
    shown = tt_json("task", "show", task["id"], env=tt_env)
    assert shown["state"] == "completed" and shown["result"] == "done by the scripted model"
    assert out.strip() == "All done."
    assert model.errors == []
    assert_no_protocol_complaints(debug_log)


def results_of_safe(model: FakeModelServer, bare: str) -> list[Any]:
    return results_of(model, bare) if conversation_requests(model) else []


def test_short_receives_end_without_late_progress_notifications(
    claude: InstalledCli, tt_env: dict[str, str], home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A receive that times out used to send a last progress notification right before its
    result; Claude Code's debug log is read for the MCP client's complaints about it."""
    town = Path(tt_env["TINYTOWN_TOWN"])
    write_attached_config(tt_env, "alice")
    debug_log = tmp_path_factory.mktemp("claude-debug") / "debug.log"
    calls = [ToolCall("receive", {"timeout_s": t}) for t in (1, 2, 1, 3)]

    def brain(turn: Turn) -> Any:
        done = len(turn.results_of("receive"))
        if done < len(calls):
            name = turn.tool("receive")
            return ToolCall(name, calls[done].arguments) if name else "no receive tool"
        return "Nothing arrived."

    with anthropic_server(brain) as model:
        env = headless_env(claude_env(tt_env, claude, model, home))
        with started(attached_argv(claude, "Check your inbox a few times.", debug_log), env, town) as proc:
            out, _err = finish(proc)
    got = results_of(model, "receive")
    assert [r["timed_out"] for r in got] == [True] * len(calls), got
    assert out.strip() == "Nothing arrived."
    log = debug_log.read_text(errors="replace")
    assert log.count("Tool 'receive' completed successfully") == len(calls)
    assert_no_protocol_complaints(debug_log)


def test_a_receive_that_waits_more_than_70_seconds_returns_the_message_sent_then(
    claude: InstalledCli, tt_env: dict[str, str], home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    town = Path(tt_env["TINYTOWN_TOWN"])
    write_attached_config(tt_env, "alice")
    debug_log = tmp_path_factory.mktemp("claude-debug") / "debug.log"
    with anthropic_server(receive_once(timeout_s=240, then="Got it.")) as model:
        env = headless_env(claude_env(tt_env, claude, model, home))
        with started(attached_argv(claude, "Wait for mail.", debug_log), env, town) as proc:
            poll_until(lambda: conversation_requests(model), "the model's first request")
            asked = time.monotonic()  # the model answered with the receive call just now
            poll_until(lambda: "Calling MCP tool: receive" in _read(debug_log), "the receive call to start")
            time.sleep(72)  # the wait under test, not a synchronisation: the receive blocks meanwhile
            assert proc.poll() is None, "Claude Code ended while its receive was waiting"
            assert len(conversation_requests(model)) == 1, "the receive returned before the message was sent"
            tt("send", "alice", "the late message", env=tt_env)
            out, _err = finish(proc, timeout_s=CLI_TIMEOUT_S + 300)
    waited = time.monotonic() - asked
    [got] = results_of(model, "receive")
    assert [m["body"] for m in got["messages"]] == ["the late message"]
    assert got["timed_out"] is False
    assert waited >= 70
    assert out.strip() == "Got it."
    assert_no_protocol_complaints(debug_log)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# ------------------------------------------------------------------ spawned agents


@contextmanager
def spawned_town(tt_env: dict[str, str]) -> Iterator[Path]:
    town = Path(tt_env["TINYTOWN_TOWN"])
    try:
        yield town
    finally:
        kill_leftover_runners(town)


def settled(env: dict[str, str], task_id: str, timeout_s: float = CLI_TIMEOUT_S) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        task: dict[str, Any] = tt_json("task", "show", task_id, env=env)
        return task if task["state"] in ("completed", "failed", "cancelled") else None

    result: dict[str, Any] = poll_until(final, f"task {task_id} to end", timeout_s)
    return result


def round_log(town: Path, agent: str, home: Path) -> str:
    """The rounds' output and Claude Code's MCP debug lines, for an assertion's message."""
    logs = sorted((town / ".tt" / "logs").glob(f"{agent}.round-*.log"))
    debug = [line for line in _read(home / "claude-debug.log").splitlines() if "MCP" in line]
    return "\n".join([*(p.read_text(errors="replace") for p in logs), *debug[-40:]])


def test_a_spawned_claude_agent_runs_shell_tools_and_reports_its_own_task(
    claude: InstalledCli, tt_env: dict[str, str], home: Path
) -> None:
    bash = ToolCall("Bash", {"command": "git init -q . && git --version && python3 -c 'print(6 * 7)'",
                             "description": "Run git and python"})
    with anthropic_server(report_round_task("reported by the agent", first=[bash])) as model, \
            spawned_town(tt_env) as town:
        env = claude_env(tt_env, claude, model, home)
        tt("spawn", "alice", "--cli", "claude", "--max-rounds", "1", env=env)
        task = tt_json("assign", "alice", "Initialise the repository", env=tt_env)
        shown = settled(tt_env, task["id"])
        log = round_log(town, "alice", home)
    assert shown["state"] == "completed", log
    result = shown["result"]
    assert result.startswith("reported by the agent\n"), log  # the agent's own report, not the output tail
    assert "git version" in result and "42" in result, result  # Bash ran without a prompt
    assert shown["decided_by"] == "agent"
    assert (town / ".git").is_dir()
    first = conversation_requests(model)[0]
    assert TINYTOWN_TOOLS <= {t["name"] for t in first["tools"]}
    assert f"task id: {task['id']}" in json.dumps(first["messages"])
    assert model.errors == []
    assert_no_protocol_complaints(home / "claude-debug.log")


def test_a_spawned_agent_is_itself_everywhere_despite_the_towns_shared_claude_settings(
    claude: InstalledCli, tt_env: dict[str, str], home: Path
) -> None:
    """The town has the conductor's ``.mcp.json`` and the hooks example as its shared
    ``.claude/settings.json``; the spawned agent dana still is dana to whoami, to ``tt`` in its
    shell, to the SessionStart hook and as the sender of its messages."""
    town = Path(tt_env["TINYTOWN_TOWN"])
    write_attached_config(tt_env, "conductor")
    (town / ".claude").mkdir()
    (town / ".claude" / "settings.json").write_text((ROOT / "configs" / "claude-code-hooks.json").read_text())
    first = [
        ToolCall("whoami"),
        ToolCall("Bash", {"command": "echo agent=$TINYTOWN_AGENT; tt prime", "description": "Who am I"}),
        ToolCall("send_message", {"to": "conductor", "body": "hello from dana's round"}),
        ToolCall("receive", {"timeout_s": 0}),
    ]
    with anthropic_server(report_round_task("identity checked", first=first)) as model, spawned_town(tt_env):
        env = claude_env(tt_env, claude, model, home)
        tt("spawn", "dana", "--cli", "claude", "--max-rounds", "1", env=env)
        task = tt_json("assign", "dana", "Say who you are", env=tt_env)
        shown = settled(tt_env, task["id"])
        log = round_log(town, "dana", home)
    assert shown["state"] == "completed", log
    assert_no_protocol_complaints(home / "claude-debug.log")
    [me] = results_of(model, "whoami")
    assert me["agent"]["name"] == "dana"
    assert me["current_task"]["id"] == task["id"]
    # the round's session works on the runner's round: its task is neither pending nor handed
    # to it again (the session model of issue 7)
    assert me["in_round"] is True and me["inbox"]["pending"] == 0
    [again] = results_of(model, "receive")
    assert [m["task_id"] for m in again["messages"]] == []
    assert shown["decided_by"] == "agent"
    shell = shown["result"].split("\n", 2)[2]
    assert "agent=dana" in shell and "you are dana in town" in shell, shell
    [sent] = results_of(model, "send_message")
    assert sent["message"]["from"] == "dana"
    inbox = tt_json("inbox", "conductor", env=tt_env)["messages"]
    assert [m["from"] for m in inbox if m["body"] == "hello from dana's round"] == ["dana"]
    # only dana's own server: the conductor's project .mcp.json is not loaded next to it
    offered = {t["name"] for t in conversation_requests(model)[0]["tools"]}
    servers = {n.split("__")[1] for n in offered if n.startswith("mcp__")}
    assert servers == {"tinytown"}
    context = json.dumps(conversation_requests(model)[0])
    assert "Tinytown: you are dana in town" in context  # the SessionStart hook's tt prime
    assert "you are conductor" not in context and "you are bob" not in context
