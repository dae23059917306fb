"""Claude Code, the released CLI, against a ``--push`` server (issue 11, push).

What can be shown headless: Claude Code started with
``--dangerously-load-development-channels server:tinytown`` on the config ``tt mcp config
--push`` writes connects to the server on the initialize-handshake era — the only one on
which it registers channel notifications (on a 2026-07-28 connection it skips them: no path
for unsolicited notifications) — and works as usual.  Whether it then *shows* a pushed message
is decided by its own gate (a claude.ai login with channels enabled, a first-party provider):
with an API key against a scripted model it registers no channel at all, so the model
request carries no ``<channel>`` event and the test checks that the message is not lost:
the model's next ``receive`` returns it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_clis import InstalledCli
from fake_models.anthropic import anthropic_server
from fake_models.scripts import _call
from fake_models.server import Turn
from test_cli_claude import (  # noqa: F401  (claude, home: fixtures)
    assert_no_protocol_complaints,
    attached_argv,
    claude,
    claude_env,
    finish,
    headless_env,
    home,
    poll_until,
    results_of,
    results_of_safe,
    started,
    tt,
)

pytestmark = [pytest.mark.agent_cli]

CHANNELS = ["--dangerously-load-development-channels", "server:tinytown"]


def test_claude_code_with_the_channels_flag_connects_to_a_push_server_on_the_handshake_era(
    claude: InstalledCli, tt_env: dict[str, str], home: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> None:
    town = Path(tt_env["TINYTOWN_TOWN"])
    text = tt("mcp", "config", "--client", "claude", "--agent", "alice", "--push", env=tt_env).stdout
    assert json.loads(text)["mcpServers"]["tinytown"]["args"][-3:] == ["--push", "--agent", "alice"]
    (town / ".mcp.json").write_text(text)
    debug_log = tmp_path_factory.mktemp("claude-debug") / "debug.log"

    def script(turn: Turn) -> object:
        if not turn.results_of("whoami"):
            return _call(turn, "whoami", {})
        if not turn.results_of("receive"):
            return _call(turn, "receive", {"timeout_s": 60})
        return "Read it."

    with anthropic_server(script) as model:
        env = headless_env(claude_env(tt_env, claude, model, home))
        with started([*attached_argv(claude, "Read your mail.", debug_log), *CHANNELS], env, town) as proc:
            poll_until(lambda: results_of_safe(model, "whoami"), "the model to see whoami's result")
            sent = json.loads(tt("send", "alice", "pushed while you worked", "--json", env=tt_env).stdout)
            out, _err = finish(proc)
    log = debug_log.read_text(errors="replace")
    connected = [line for line in log.splitlines() if "Connection established with capabilities" in line]
    assert connected and all('"protocolEra":"legacy"' in line for line in connected), connected
    [me] = results_of(model, "whoami")
    assert me["agent"]["name"] == "alice"
    [got] = results_of(model, "receive")
    assert [m["id"] for m in got["messages"]] == [sent["message"]["id"]]
    assert out.strip() == "Read it."
    assert_no_protocol_complaints(debug_log)
