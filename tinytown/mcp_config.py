"""MCP client configs that start ``tinytown-mcp`` for a town and an agent.

Pure (no ``mcp`` import, no Redis): ``tt mcp config`` prints these, and the runner writes
``.tt/mcp/<agent>.json`` for ``TINYTOWN_MCP_CONFIG``.  The command is the absolute path of
the ``tinytown-mcp`` script installed next to this Python when it exists (so the config
works from any directory and any PATH), else ``python -m tinytown_mcp`` with this Python.

``REDIS_URL`` goes into the config's ``env`` only when the town's Redis comes from that
environment variable: a URL in ``tinytown.toml`` is read by the server itself, and a
managed Redis needs nothing.  A URL without a password is written as it is.  A password is
never written, neither in printed configs nor in the file the runner generates: the config
*refers* to the variable, and the server gets it from the environment its client was started
in (the runner's, which holds ``REDIS_URL``):

    claude (.mcp.json)  "env": {"REDIS_URL": "${REDIS_URL}"}   Claude Code expands it (so does
                                                               Gemini CLI, and our scripted agent)
    cursor              "env": {"REDIS_URL": "${env:REDIS_URL}"}
    codex               env_vars = ["REDIS_URL"]               Codex passes that variable through
    desktop             the URL with ``****``: a GUI app has no shell environment; the user
                        pastes the password in

Claude Code's entry carries two of its own keys: ``timeout`` (ms, its per-server tool-call
limit, above the longest ``receive``) and ``alwaysLoad`` (the tools are in the first model
request, never deferred behind its tool search, and start-up waits for the server).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tinytown.config import TownPaths
from tinytown.masking import mask_url
from tinytown.models import MAX_RECEIVE_TIMEOUT_S
from tinytown.private import write_private
from tinytown.processes import mcp_config_path

Client = Literal["claude", "codex", "gemini", "cursor", "desktop"]
CLIENTS: tuple[Client, ...] = ("claude", "codex", "gemini", "cursor", "desktop")
SERVER_KEY = "tinytown"
ROUND_ENV = "TINYTOWN_ROUND"
"""The variable that carries a runner round's credential to the round's MCP server."""
TOOL_TIMEOUT_S = int(MAX_RECEIVE_TIMEOUT_S) + 60
"""The tool-call timeout client configs set: a receive may wait MAX_RECEIVE_TIMEOUT_S."""

# Gemini CLI settings of the tinytown server.  ``trust`` lets its tools run without a prompt
# (headless Gemini denies every tool that would ask, so without it the agent gets no
# tinytown tools unless it runs with --yolo); ``timeout`` (ms) cuts off a tool call and
# must outlast receive's longest wait (300 s, ``town.MAX_RECEIVE_TIMEOUT_S``).
GEMINI_SERVER_SETTINGS: dict[str, bool | int] = {"trust": True, "timeout": 360_000}

# Codex settings of the tinytown server.  Codex skips an optional MCP server that is not
# ready when a turn starts (`codex exec` would run without tinytown tools): ``required``
# makes it wait, up to ``startup_timeout_sec`` (the server may first start the town's
# Redis).  A tool call is cut off at ``tool_timeout_sec`` (Codex's default is 300 s), which
# must outlast receive's longest wait (300 s, ``town.MAX_RECEIVE_TIMEOUT_S``).
CODEX_SERVER_SETTINGS: dict[str, bool | int] = {
    "required": True,
    "startup_timeout_sec": 60,
    "tool_timeout_sec": 360,
}

# Where each client reads the snippet from (shown by `tt mcp config`).
WHERE: dict[Client, str] = {
    "claude": (".mcp.json in the project root (Claude Code asks once to approve it in an interactive "
               "session; headless: MCP_CONNECTION_NONBLOCKING=0 MCP_CONNECT_TIMEOUT_MS=60000 claude -p ... "
               "--allowedTools mcp__tinytown)"),
    "codex": "~/.codex/config.toml (Codex CLI)",
    "gemini": ("the mcpServers of .gemini/settings.json in the project, or of ~/.gemini/settings.json "
               "(Gemini CLI)"),
    "cursor": ".cursor/mcp.json in the project (or ~/.cursor/mcp.json for every project)",
    "desktop": "claude_desktop_config.json (Claude Desktop: Settings > Developer > Edit Config)",
}


def server_command() -> list[str]:
    """argv prefix that starts the server with this installation."""
    script = Path(sys.executable).parent / "tinytown-mcp"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "tinytown_mcp"]


REDIS_URL = "REDIS_URL"
_REFERENCE = re.compile(r"^\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}$")


def env_reference(value: str) -> str | None:
    """The variable an env value refers to (``${NAME}`` or ``${env:NAME}``), else ``None``."""
    found = _REFERENCE.match(value)
    return found.group(1) if found else None


def redis_url_has_secret() -> bool:
    """Whether ``REDIS_URL`` holds a password (then configs refer to it instead)."""
    url = os.environ.get(REDIS_URL)
    return bool(url) and mask_url(url) != url


def server_env(client: Client = "claude") -> dict[str, str]:
    """The environment the server needs beyond its arguments (see module doc); never a password."""
    url = os.environ.get(REDIS_URL)
    if not url:
        return {}
    if not redis_url_has_secret():
        return {REDIS_URL: url}
    if client == "cursor":
        return {REDIS_URL: "${env:REDIS_URL}"}
    if client == "desktop":
        return {REDIS_URL: mask_url(url) or ""}
    return {REDIS_URL: "${REDIS_URL}"}


PUSH_FLAG = "--push"
"""The server flag of a session that gets new mail pushed as Claude Code channel events."""
CHANNELS_HINT = ("start Claude Code with `claude --dangerously-load-development-channels "
                 f"server:{SERVER_KEY}` (Claude Code >= 2.1.80) to see pushed mail")


def server_entry(root: Path, agent: str, client: Client = "claude", *, push: bool = False) -> dict[str, Any]:
    """``{"command": ..., "args": [...], "env": {...}}`` for one agent of the town at ``root``
    (``push``: the server pushes new mail, see :data:`PUSH_FLAG`)."""
    command, *prefix = server_command()
    return {
        "command": command,
        # --agent NAME stays last: gemini_server_entry rewrites it
        "args": [*prefix, "--town", str(Path(root).resolve()), *([PUSH_FLAG] if push else []),
                 "--agent", agent],
        "env": server_env(client),
    }


def with_claude_code_keys(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` plus Claude Code's ``timeout`` (ms) and ``alwaysLoad`` (see module doc)."""
    return {**entry, "timeout": TOOL_TIMEOUT_S * 1000, "alwaysLoad": True}


def _toml(data: dict[str, Any]) -> str:
    import tomli_w  # Codex's configs only: not loaded on every `tt` start

    return tomli_w.dumps(data)


def client_config(root: Path, agent: str, client: Client = "claude", *, push: bool = False) -> str:
    """The text to paste into ``client``'s MCP configuration (see :data:`WHERE`).

    Raises:
        ValueError: an unknown client.
    """
    entry = server_entry(root, agent, client, push=push)
    if client == "codex":
        return _toml({"mcp_servers": {SERVER_KEY: codex_server_table(entry)}})
    if client == "gemini":
        return json.dumps({"mcpServers": {SERVER_KEY: gemini_server_entry(entry, agent, follow_env=True)}},
                          indent=2) + "\n"
    if client == "claude":
        entry = with_claude_code_keys(entry)
    if client in ("claude", "cursor", "desktop"):
        return json.dumps({"mcpServers": {SERVER_KEY: entry}}, indent=2) + "\n"
    raise ValueError(f"unknown MCP client {client!r}; choose one of {', '.join(CLIENTS)}")


def gemini_server_entry(entry: dict[str, Any], agent: str, *, follow_env: bool) -> dict[str, Any]:
    """Gemini CLI's ``mcpServers.tinytown`` entry for a server entry (see
    :data:`GEMINI_SERVER_SETTINGS`).

    ``follow_env``: the agent becomes ``${TINYTOWN_AGENT:-agent}``, which Gemini CLI expands
    from its environment.  A project's ``.gemini/settings.json`` overrides the private
    settings a spawned agent's round gets, so a pasted entry must not pin one identity: in
    a round (``TINYTOWN_AGENT`` set by the runner) it names the round's agent, and passes
    the round's credential (:data:`ROUND_ENV`, which the ``gemini`` preset sets) on to it.
    """
    args = [str(a) for a in entry["args"]]
    env = dict(entry.get("env") or {})
    if follow_env and len(args) >= 2 and args[-2] == "--agent":
        args[-1] = f"${{TINYTOWN_AGENT:-{agent}}}"
        env[ROUND_ENV] = f"${{{ROUND_ENV}:-}}"  # and joins the round's session, not takes it over
    out: dict[str, Any] = {"command": entry["command"], "args": args}
    if env:
        out["env"] = env
    out.update(GEMINI_SERVER_SETTINGS)
    return out

def codex_server_table(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``[mcp_servers.tinytown]`` table of Codex's ``config.toml`` for a server entry."""
    table: dict[str, Any] = {"command": entry["command"], "args": list(entry["args"])}
    raw_env = entry.get("env") or {}
    env = {k: v for k, v in raw_env.items() if env_reference(v) is None}
    passed = sorted(name for v in raw_env.values() if (name := env_reference(v)))
    if env:
        table["env"] = env
    if passed:  # a ${VAR} reference: Codex passes that variable of its own environment on
        table["env_vars"] = passed
    table.update(CODEX_SERVER_SETTINGS)
    return table


def secrets_note(client: Client) -> str | None:
    """What the user must know when ``REDIS_URL`` holds a password the config leaves out."""
    if not redis_url_has_secret():
        return None
    if client == "desktop":
        return "the Redis password is masked above; replace **** with it (REDIS_URL has it)"
    return ("the config refers to REDIS_URL instead of holding its password: start the client "
            "with REDIS_URL set")


def write_agent_mcp_config(paths: TownPaths, agent: str, *, round_credential: str | None = None) -> Path:
    """Write ``.tt/mcp/<agent>.json`` (the ``.mcp.json`` format) and return its path.

    The runner points ``TINYTOWN_MCP_CONFIG`` at it; presets that take a config file get
    it on their command line (e.g. ``claude --mcp-config``).  ``round_credential`` goes into
    the server's ``env`` as :data:`ROUND_ENV`: the server then joins the runner's session
    for that round instead of taking the mailbox over.  It holds no Redis password (a
    ``${REDIS_URL}`` reference instead, see the module doc); mode 0600, as the round
    credential is in it.
    """
    path = mcp_config_path(paths, agent)
    entry = server_entry(paths.root, agent, "claude")
    if round_credential is not None:
        entry["env"][ROUND_ENV] = round_credential
    # the claude preset reads this file with --mcp-config; the others take command, args, env
    text = json.dumps({"mcpServers": {SERVER_KEY: with_claude_code_keys(entry)}}, indent=2) + "\n"
    write_private(path, text)
    return path


# ----------------------------------------------------------------------------- over HTTP

HTTP_CLIENTS: tuple[Client, ...] = ("claude", "codex", "gemini", "cursor")
"""The clients with a config form for a remote (streamable HTTP) server; Claude Desktop adds
remote servers as connectors in its settings, not in its config file."""


def mcp_url(url: str) -> str:
    """The ``/mcp`` endpoint of a ``tt serve`` URL (a bare ``http://host:port`` gets ``/mcp``)."""
    base = url.strip()
    scheme, sep, rest = base.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise ValueError(f"--http wants an http:// or https:// URL of `tt serve`, not {url!r}")
    host, slash, path = rest.partition("/")
    if not host:
        raise ValueError(f"--http wants an http:// or https:// URL of `tt serve`, not {url!r}")
    return base if path.strip("/") else f"{scheme}://{host}/mcp"


def with_push(url: str) -> str:
    """``url`` with ``push=1`` in its query: ``tt serve`` pushes new mail to that session."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "push"] + [("push", "1")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def http_client_config(url: str, token: str, client: Client = "claude", *, push: bool = False) -> str:
    """The text to paste into ``client``'s MCP configuration to reach ``tt serve`` at ``url``
    as the agent ``token`` names (the token travels in the ``Authorization`` header);
    ``push``: the URL asks for pushed mail (:func:`with_push`).

    Raises:
        ValueError: a client without an HTTP form (see :data:`HTTP_CLIENTS`), or a bad URL.
    """
    endpoint = with_push(mcp_url(url)) if push else mcp_url(url)
    headers = {"Authorization": f"Bearer {token}"}
    if client == "claude":  # Claude Code's .mcp.json
        entry: dict[str, Any] = with_claude_code_keys({"type": "http", "url": endpoint, "headers": headers})
    elif client == "gemini":  # httpUrl is streamable HTTP (url would be the old SSE transport)
        entry = {"httpUrl": endpoint, "headers": headers, **GEMINI_SERVER_SETTINGS}
    elif client == "cursor":
        entry = {"url": endpoint, "headers": headers}
    elif client == "codex":  # literal headers are http_headers (Codex ignores a `headers` key)
        table = {"url": endpoint, "http_headers": headers, **CODEX_SERVER_SETTINGS}
        return _toml({"mcp_servers": {SERVER_KEY: table}})
    else:
        raise ValueError(f"{client} has no HTTP server config; choose one of {', '.join(HTTP_CLIENTS)}")
    return json.dumps({"mcpServers": {SERVER_KEY: entry}}, indent=2) + "\n"
