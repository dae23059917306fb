"""MCP client configs (``tinytown.mcp_config``) and ``tt mcp config``.

The generated configs are checked by using them: the command and arguments they name are
started as an MCP stdio server and answer ``whoami``.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import clean_env
from mcp_support import ok, stdio

from tinytown.config import (
    AgentCliSettings,
    Limits,
    RedisSettings,
    RetentionSettings,
    TownConfig,
    TownPaths,
    parse_config,
)
from tinytown.mcp_config import CODEX_SERVER_SETTINGS, client_config, server_command, write_agent_mcp_config

pytestmark = [pytest.mark.anyio]


def test_the_command_is_the_installed_script_next_to_this_python() -> None:
    assert server_command() == [str(Path(sys.executable).parent / "tinytown-mcp")]


@pytest.mark.parametrize("client", ["claude", "cursor", "desktop"])
def test_json_clients_get_an_mcp_servers_entry(
    tmp_path: Path, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    entry = json.loads(client_config(tmp_path, "alice", client))["mcpServers"]["tinytown"]  # type: ignore[arg-type]
    assert entry["command"].endswith("tinytown-mcp")
    assert entry["args"] == ["--town", str(tmp_path.resolve()), "--agent", "alice"]
    assert entry["env"] == {}


def test_codex_gets_a_toml_table_that_passes_redis_url_through_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@db:6379/0")
    text = client_config(tmp_path, "bob", "codex")
    table = tomllib.loads(text)["mcp_servers"]["tinytown"]
    assert table["args"][-2:] == ["--agent", "bob"]
    assert table["env_vars"] == ["REDIS_URL"] and "env" not in table
    assert "hunter2" not in text
    # ready before the first turn, and a tool call outlasts receive(timeout_s=300)
    assert (table["required"], table["startup_timeout_sec"], table["tool_timeout_sec"]) == (True, 60, 360)


def test_gemini_gets_a_trusted_entry_with_a_long_timeout_that_yields_to_a_runners_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    entry = json.loads(client_config(tmp_path, "alice", "gemini"))["mcpServers"]["tinytown"]
    assert entry["args"] == ["--town", str(tmp_path.resolve()), "--agent", "${TINYTOWN_AGENT:-alice}"]
    assert entry["trust"] is True and entry["timeout"] > 300 * 1000
    assert entry["env"] == {"TINYTOWN_ROUND": "${TINYTOWN_ROUND:-}"}


def test_an_unknown_client_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of claude, codex, gemini, cursor, desktop"):
        client_config(tmp_path, "alice", "vim")  # type: ignore[arg-type]


async def test_the_agent_config_file_starts_a_working_server(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", tt_env["REDIS_URL"])
        path = write_agent_mcp_config(TownPaths(root), "worker")
    assert path == root / ".tt" / "mcp" / "worker.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = json.loads(path.read_text())["mcpServers"]["tinytown"]
    assert entry["env"] == {"REDIS_URL": tt_env["REDIS_URL"]}  # the real URL: the runner needs it
    env = {k: v for k, v in tt_env.items() if k not in ("TINYTOWN_TOWN", "REDIS_URL")}
    async with stdio({**env, **entry["env"]}, None, command=[entry["command"], *entry["args"]]) as client:
        me = await ok(client, "whoami")
    assert me["agent"]["name"] == "worker" and me["root"] == str(root.resolve())


def tt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )


def test_tt_mcp_config_prints_a_paste_ready_snippet(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    claude = tt("mcp", "config", "--agent", "Alice", env=tt_env)
    assert claude.returncode == 0, claude.stderr
    entry = json.loads(claude.stdout)["mcpServers"]["tinytown"]
    assert entry["args"] == ["--town", str(root.resolve()), "--agent", "alice"]
    assert ".mcp.json" in claude.stderr
    codex = tt("mcp", "config", "--client", "codex", "--json", env={**tt_env, "TINYTOWN_AGENT": "bob"})
    shown = json.loads(codex.stdout)
    assert (shown["client"], shown["agent"], shown["town"]) == ("codex", "bob", str(root.resolve()))
    assert tomllib.loads(shown["config"])["mcp_servers"]["tinytown"]["args"][-1] == "bob"
    bad = tt("mcp", "config", "--client", "emacs", env=tt_env)
    assert bad.returncode == 2 and bad.stderr.startswith("tt: invalid: --client")
    refused = tt("mcp", "config", "--agent", "all", env=tt_env)  # it fits the name rule: say why
    assert refused.returncode == 1 and refused.stderr.startswith("tt: invalid: 'all' names every agent")
    typo = tt("mcp", "config", "--agent", "Bob/2", env=tt_env)  # as typed, not lower-cased
    assert typo.returncode == 1 and typo.stderr.startswith("tt: invalid: 'Bob/2' is not an agent name")


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", [".mcp.json", "claude_desktop_config.json", "mcp.json"])
def test_the_ready_json_configs_start_tinytown_mcp(name: str) -> None:
    entry = json.loads((CONFIGS / name).read_text())["mcpServers"]["tinytown"]
    assert Path(entry["command"]).name == "tinytown-mcp"
    assert entry["args"][-2:] == ["--agent", "conductor"]


def test_the_ready_gemini_settings_trust_tinytown_and_follow_a_runners_agent() -> None:
    entry = json.loads((CONFIGS / "gemini-settings.json").read_text())["mcpServers"]["tinytown"]
    assert entry["args"][-2:] == ["--agent", "${TINYTOWN_AGENT:-conductor}"]
    assert entry["trust"] is True and entry["timeout"] > 300_000


def test_the_ready_codex_snippet_is_a_tinytown_table() -> None:
    table = tomllib.loads((CONFIGS / "config.toml").read_text())["mcp_servers"]["tinytown"]
    assert table["command"] == "tinytown-mcp" and "--town" in table["args"]
    assert {k: table[k] for k in CODEX_SERVER_SETTINGS} == CODEX_SERVER_SETTINGS


def test_the_annotated_tinytown_toml_shows_every_key_with_its_default() -> None:
    text = (CONFIGS / "tinytown.toml").read_text()
    parsed = parse_config(tomllib.loads(text))
    assert parsed == TownConfig(name=parsed.name)
    keys = [*TownConfig.model_fields, *RedisSettings.model_fields, *Limits.model_fields,
            *RetentionSettings.model_fields, *AgentCliSettings.model_fields]
    missing = [key for key in keys if f"{key} =" not in text and f"[{key}" not in text]
    assert missing == [], f"configs/tinytown.toml does not show {missing}"


def test_tt_init_example_prints_the_annotated_tinytown_toml_without_a_checkout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tinytown.cli.main", "init", "--example"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (CONFIGS / "tinytown.toml").read_text()
    assert parse_config(tomllib.loads(done.stdout)).name == "my-town"
    assert list(tmp_path.iterdir()) == []  # it creates nothing
    as_json = subprocess.run([sys.executable, "-m", "tinytown.cli.main", "init", "--example", "--json"],
                             cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
                             check=False)  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr  # JSON, not the TOML text --json was ignored for
    shown = json.loads(as_json.stdout)
    assert (shown["file"], shown["text"]) == ("tinytown.toml", done.stdout)
    assert parse_config(shown["values"]).name == "my-town"


def test_tt_mcp_hooks_prints_the_claude_code_hooks_to_merge(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tinytown.cli.main", "mcp", "hooks"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    hooks = json.loads(done.stdout)["hooks"]
    assert "tt prime" in hooks["SessionStart"][0]["hooks"][0]["command"]
    assert "tt inbox --count" in hooks["UserPromptSubmit"][0]["hooks"][0]["command"]
    assert ".claude/settings.json" in done.stderr
    as_json = subprocess.run([sys.executable, "-m", "tinytown.cli.main", "mcp", "hooks", "--json"],
                             cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
                             check=False)  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr  # every command takes --json
    assert json.loads(as_json.stdout) == json.loads(done.stdout) and as_json.stderr == ""
