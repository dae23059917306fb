"""Presets by the argv they produce, the round prompt, and the scripted agent's job.

No test here needs an AI CLI: built-ins are checked by the command lines they build and by
the error a missing program gets.
"""

from __future__ import annotations

import json
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from tinytown.config import parse_config
from tinytown.errors import Invalid
from tinytown.mcp_config import CODEX_SERVER_SETTINGS
from tinytown.models import Agent, InboxCounts, Message, MessageKind, Task, TaskState
from tinytown.presets import BUILTIN_PRESETS, RoundInputs, resolve_preset, round_env
from tinytown.prompting import render_prime, render_round_prompt
from tinytown.runner import describe_argv, env_changes
from tinytown.town import MAX_RECEIVE_TIMEOUT_S
from tinytown_mcp.scripted_agent import work

TT = str(Path(sys.executable).parent / "tt")


def inputs(tmp_path: Path, prompt: str = "do the thing") -> RoundInputs:
    return RoundInputs(
        prompt=prompt, prompt_file=tmp_path / "p.md", mcp_config=tmp_path / "mcp.json",
        agent="bob", town=tmp_path,
    )


SERVER = {"command": "/venv/bin/tinytown-mcp", "args": ["--town", "/t", "--agent", "bob"],
          "env": {"REDIS_URL": "redis://:pw@h:6379/0"}}


def test_claude_reads_the_prompt_on_stdin_and_gets_the_mcp_config_file(tmp_path: Path) -> None:
    preset = BUILTIN_PRESETS["claude"]
    argv = preset.argv(inputs(tmp_path), SERVER)
    assert argv == [
        "claude", "-p", "--mcp-config", str(tmp_path / "mcp.json"), "--strict-mcp-config",
        "--allowedTools", "mcp__tinytown,Bash", "--permission-mode", "acceptEdits", "--output-format", "text",
    ]
    assert preset.stdin("do the thing") == b"do the thing"


def _codex_overrides(argv: list[str]) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for i, arg in enumerate(argv):
        if arg == "-c":  # each value must be valid TOML, as codex parses it
            key, _, value = argv[i + 1].partition("=")
            parsed[key] = tomllib.loads(f"v = {value}")["v"]
    return parsed


def test_codex_runs_headless_in_its_sandbox_with_the_mcp_server_as_config_overrides(tmp_path: Path) -> None:
    preset = BUILTIN_PRESETS["codex"]
    argv = preset.argv(inputs(tmp_path), SERVER)
    assert argv[:5] == ["codex", "exec", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    assert "--full-auto" not in argv  # gone from Codex 0.1xx: exit 2
    assert argv[argv.index("--add-dir") + 1] == f"{tmp_path}/.git"
    assert argv[-1] == "-"
    assert _codex_overrides(argv) == {
        "sandbox_workspace_write.network_access": True,
        "approval_policy": "never",
        "mcp_servers.tinytown.command": "/venv/bin/tinytown-mcp",
        "mcp_servers.tinytown.args": ["--town", "/t", "--agent", "bob"],
        "mcp_servers.tinytown.required": True,
        "mcp_servers.tinytown.startup_timeout_sec": 60,
        "mcp_servers.tinytown.tool_timeout_sec": 360,
        "mcp_servers.tinytown.env": {},
        "mcp_servers.tinytown.env_vars": ["REDIS_URL"],
    }
    assert preset.stdin("x") == b"x"


def test_codex_gets_the_servers_secrets_through_its_environment_not_its_command_line(tmp_path: Path) -> None:
    preset = BUILTIN_PRESETS["codex"]
    server = {**SERVER, "env": {"REDIS_URL": "redis://:pw@h:6379/0", "TINYTOWN_ROUND": "s3cret"}}
    argv = preset.argv(inputs(tmp_path), server)
    assert not [a for a in argv if "pw@" in a or "s3cret" in a]
    assert _codex_overrides(argv)["mcp_servers.tinytown.env_vars"] == ["REDIS_URL", "TINYTOWN_ROUND"]
    assert preset.server_env(server) == server["env"]
    assert BUILTIN_PRESETS["claude"].server_env(server) == {}  # reads them from --mcp-config


def test_codex_overrides_replace_the_users_tinytown_env_even_when_a_round_needs_none(tmp_path: Path) -> None:
    argv = BUILTIN_PRESETS["codex"].argv(inputs(tmp_path), {"command": "tinytown-mcp", "args": []})
    assert _codex_overrides(argv)["mcp_servers.tinytown.env"] == {}
    assert _codex_overrides(argv)["mcp_servers.tinytown.env_vars"] == []


def test_a_tightened_codex_preset_in_tinytown_toml_keeps_the_tinytown_server(tmp_path: Path) -> None:
    config = parse_config({"name": "t", "agent_clis": {"codex": {"command": [
        "codex", "exec", "--sandbox", "read-only", "{codex_mcp_overrides}", "-"]}}})
    argv = resolve_preset(config, "codex").argv(inputs(tmp_path), SERVER)
    assert argv[:4] == ["codex", "exec", "--sandbox", "read-only"]
    assert "sandbox_workspace_write.network_access" not in _codex_overrides(argv)
    assert _codex_overrides(argv)["mcp_servers.tinytown.args"] == ["--town", "/t", "--agent", "bob"]
    assert _codex_overrides(argv)["mcp_servers.tinytown.required"] is True


def test_codex_tool_timeout_outlasts_the_longest_receive() -> None:
    assert CODEX_SERVER_SETTINGS["tool_timeout_sec"] > MAX_RECEIVE_TIMEOUT_S


def test_aider_reads_the_prompt_from_a_file_and_gemini_from_stdin(tmp_path: Path) -> None:
    aider = BUILTIN_PRESETS["aider"].argv(inputs(tmp_path))
    assert aider[:3] == ["aider", "--yes-always", "--no-git"]
    assert aider[-2:] == ["--message-file", str(tmp_path / "p.md")]
    assert BUILTIN_PRESETS["aider"].reports is False
    gemini = BUILTIN_PRESETS["gemini"]
    argv = gemini.argv(inputs(tmp_path, "fix it"))
    assert argv[:3] == ["gemini", "--approval-mode", "yolo"] and argv[-2] == "-p" and "fix it" not in argv
    assert gemini.stdin("fix it") == b"fix it"


def _gemini_round(tmp_path: Path, user: Path, project: dict[str, object] | None = None) -> dict[str, str]:
    town = tmp_path / "town"
    (town / ".gemini").mkdir(parents=True, exist_ok=True)
    if project is not None:
        (town / ".gemini" / "settings.json").write_text(json.dumps(project))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEMINI_CLI_HOME", str(user))
        patch.delenv("REDIS_URL", raising=False)
        return round_env({"PATH": "/bin"}, BUILTIN_PRESETS["gemini"], {}, RoundInputs(
            prompt="p", prompt_file=town / "p.md", mcp_config=town / "m.json", agent="bob", town=town))


def test_a_gemini_round_gets_a_private_home_with_the_users_settings_and_its_own_server(
    tmp_path: Path,
) -> None:
    user = tmp_path / "user"
    (user / ".gemini" / "extensions").mkdir(parents=True)
    (user / ".gemini" / "oauth_creds.json").write_text("{}")
    mine = {"security": {"auth": {"selectedType": "oauth-personal"}},
            "mcpServers": {"tinytown": {"command": "old"}, "github": {"command": "gh-mcp"}}}
    (user / ".gemini" / "settings.json").write_text(json.dumps(mine))
    env = _gemini_round(tmp_path, user)
    home = tmp_path / "town" / ".tt" / "gemini" / "bob"
    assert env["GEMINI_CLI_HOME"] == str(home) and env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    settings_file = home / ".gemini" / "settings.json"
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    settings = json.loads(settings_file.read_text())
    assert settings["security"] == mine["security"]
    assert settings["mcpServers"]["github"] == {"command": "gh-mcp"}
    server = settings["mcpServers"]["tinytown"]
    assert server["args"][-2:] == ["--agent", "bob"]
    assert server["trust"] is True and server["timeout"] > 300_000
    assert (home / ".gemini" / "oauth_creds.json").resolve() == user / ".gemini" / "oauth_creds.json"
    assert (home / ".gemini" / "extensions").is_symlink()
    assert json.loads((user / ".gemini" / "settings.json").read_text()) == mine  # never written
    _gemini_round(tmp_path, user)  # again: links and settings are rewritten in place


def test_a_project_gemini_entry_pinned_to_another_agent_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    pinned = {"mcpServers": {"tinytown": {"command": "tinytown-mcp", "args": ["--agent", "alice"]}}}
    _gemini_round(tmp_path, user, pinned)
    assert "make its --agent ${TINYTOWN_AGENT:-NAME}" in caplog.text
    caplog.clear()
    follows = {"command": "tinytown-mcp", "args": ["--agent", "${TINYTOWN_AGENT:-alice}"]}
    following = {"mcpServers": {"tinytown": follows}}
    _gemini_round(tmp_path, user, following)
    assert caplog.text == ""


def test_unreadable_gemini_user_settings_are_refused_with_the_file_named(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / ".gemini").mkdir(parents=True)
    (user / ".gemini" / "settings.json").write_text("// a comment\n{}")
    with pytest.raises(Invalid, match="settings.json is not JSON tinytown can read"):
        _gemini_round(tmp_path, user)


def test_a_preset_whose_program_is_not_on_path_is_refused_with_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(Invalid) as caught:
        BUILTIN_PRESETS["claude"].locate(path=str(tmp_path))
    text = str(caught.value)
    assert text.startswith("invalid: preset 'claude' runs `claude`, which is not on PATH")
    assert "npm install -g @anthropic-ai/claude-code" in text
    with pytest.raises(Invalid, match="npm install -g @openai/codex"):
        BUILTIN_PRESETS["codex"].locate(path=str(tmp_path))


def test_the_scripted_preset_always_runs_this_python() -> None:
    preset = BUILTIN_PRESETS["scripted"]
    assert preset.locate(path="") == sys.executable
    assert preset.argv(inputs(Path("/t")))[:3] == [sys.executable, "-m", "tinytown_mcp.scripted_agent"]


def test_custom_presets_fill_placeholders_and_can_replace_a_builtin(tmp_path: Path) -> None:
    config = parse_config({
        "name": "t",
        "agent_clis": {
            "mine": {"command": ["my-agent", "--as", "{agent}", "--in", "{town}"], "prompt": "arg",
                     "env": {"MODE": "fast"}, "mcp_config_args": ["--mcp", "{mcp_config}"]},
            "claude": {"command": ["claude", "-p", "--model", "opus"]},
        },
    })
    mine = resolve_preset(config, "mine")
    assert mine.argv(inputs(tmp_path, "hello {agent}")) == [
        "my-agent", "--as", "bob", "--in", str(tmp_path), "--mcp", str(tmp_path / "mcp.json"),
        "hello {agent}",  # the prompt is never read as a template
    ]
    assert resolve_preset(config, "claude").command == ("claude", "-p", "--model", "opus")
    env = round_env({"PATH": "/bin", "TINYTOWN_TASK_ID": "old"}, mine,
                    {"TINYTOWN_AGENT": "bob", "TINYTOWN_TASK_ID": None})
    assert env == {"PATH": "/bin", "MODE": "fast", "TINYTOWN_AGENT": "bob"}


def test_an_unknown_preset_or_no_preset_at_all_is_refused_listing_the_presets() -> None:
    config = parse_config({"name": "t", "agent_clis": {"mine": {"command": ["x"]}}})
    listed = "presets: aider, claude, codex, gemini, mine, scripted"
    with pytest.raises(Invalid, match=f"no preset named 'nope'; {listed}"):
        resolve_preset(config, "nope")
    with pytest.raises(Invalid, match="no --cli given and tinytown.toml sets no default_cli; presets: aider"):
        resolve_preset(config, None)
    assert resolve_preset(parse_config({"name": "t", "default_cli": "codex"}), None).name == "codex"


def test_the_round_prompt_lists_each_message_with_its_ids_and_how_to_finish() -> None:
    agent = Agent(id="a1", name="bob", role="reviewer")
    task = Task(id="t-1", description="review the PR", created_by="conductor", attempt=2,
                state=TaskState.RUNNING)
    messages = [
        Message(id="m-1", sender="conductor", to="bob", kind=MessageKind.TASK, body="review the PR",
                task_id="t-1"),
        Message(id="m-2", sender="alice", to="bob", kind=MessageKind.QUERY, body="which branch?"),
    ]
    prompt = render_round_prompt(agent, "shop", Path("/work/shop"), messages, {"t-1": task})
    for expected in (
        "You are bob - role: reviewer", "town 'shop' (directory /work/shop)", "You have 2 new messages",
        "message id: m-1", "task id: t-1 (attempt 2)", "message id: m-2", "from: alice",
        "kind: query", "which branch?", 'task_done(task_id="<task id>"',
        f"run: {TT} task done <task id>", f'run: {TT} send <from> "<answer>"',
        'reply_to="<message id>"', "asked once more, and then it fails",
    ):
        assert expected in prompt
    assert "exit code" not in prompt


def test_a_preset_that_cannot_report_is_told_its_exit_code_decides() -> None:
    agent = Agent(id="a1", name="bob")
    task = Task(id="t-1", description="refactor", created_by="conductor", attempt=1)
    message = Message(id="m-1", sender="conductor", to="bob", kind=MessageKind.TASK, body="refactor",
                      task_id="t-1")
    prompt = render_round_prompt(agent, "shop", Path("/w"), [message], {"t-1": task}, reports=False)
    assert "exit 0 marks it completed" in prompt and "task_done" not in prompt
    assert BUILTIN_PRESETS["aider"].reports is False
    assert all(BUILTIN_PRESETS[name].reports for name in ("claude", "codex", "gemini", "scripted"))
    config = parse_config({"name": "t", "agent_clis": {"mine": {"command": ["x"], "reports": False}}})
    assert resolve_preset(config, "mine").reports is False


def test_the_runner_log_elides_the_prompt_from_an_argv() -> None:
    prompt = "do it\nnow"
    assert describe_argv(["gemini", "-p", prompt], prompt, on_stdin=False) == (
        "gemini -p '<prompt 9 chars>'")
    assert describe_argv(["claude", "-p"], prompt, on_stdin=True) == (
        "claude -p (<prompt 9 chars> on stdin)")
    codex = ["codex", "exec", "-c", 'mcp_servers.tinytown.env={"REDIS_URL" = "redis://:pw@h/0"}']
    assert describe_argv(codex, prompt, on_stdin=True, hide={"REDIS_URL": "redis://:pw@h/0"}) == (
        "codex exec -c 'mcp_servers.tinytown.env={\"REDIS_URL\" = \"<REDIS_URL>\"}' "
        "(<prompt 9 chars> on stdin)")
    assert env_changes({"A": "1", "B": "2", "C": "3"}, {"A": "1", "B": "9", "D": "4"}, ["A"]) == (
        ["A", "B", "D"], ["C"])


def test_prime_tells_an_agent_its_task_and_its_mail() -> None:
    agent = Agent(id="a1", name="bob")
    task = Task(id="t-9", description="write the docs", created_by="conductor", attempt=1,
                state=TaskState.RUNNING)
    text = render_prime(agent, "shop", Path("/w"), task, InboxCounts(pending=3, urgent=1))
    assert "you are bob in town 'shop'" in text
    assert "Current task: t-9 (running, attempt 1): write the docs" in text
    assert "Inbox: 3 pending (1 urgent" in text
    assert "task_done(task_id, result)" in text
    conductor = render_prime(Agent(id="c", name="conductor"), "shop", None, None, InboxCounts())
    assert "You are the conductor" in conductor


@pytest.mark.parametrize(("description", "ok", "result"), [
    ("2 + 3 * 4", True, "2 + 3 * 4 = 14"),
    ("(17 - 5) * 3", True, "(17 - 5) * 3 = 36"),
    ("1000 / 8", True, "1000 / 8 = 125"),
    ("7 / 2", True, "7 / 2 = 3.5"),
    ("hello tiny town", True, "3 words; reversed: town tiny hello"),
    ("__import__('os')", True, "1 words; reversed: __import__('os')"),
    ("fail: the disk is full", False, "the disk is full"),
])
def test_the_scripted_agent_does_arithmetic_or_counts_words(description: str, ok: bool, result: str) -> None:
    assert work(description) == (ok, result)
