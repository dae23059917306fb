"""Agent CLI presets: argv templates a runner fills in for each round.

A spawn names a preset; no client can pass a raw command.  A preset is an argv template,
never a shell string.  Each element may hold these placeholders, replaced textually (so a
brace anywhere else is left alone):

    {prompt}        the round's prompt text          {prompt_file}  a file holding it
    {mcp_config}    the generated ``.mcp.json``      {agent}        the agent's name
    {town}          the town directory               {python}       this Python interpreter
    {git_common_dir}  the git directory of the town's repository, shared by its worktrees
                    (``git rev-parse --git-common-dir`` from the town, absolute; ``{town}/.git``
                    when the town is in no repository)
    {gemini_home}   a private Gemini CLI home for the agent (see :func:`gemini_home`)
    {round_credential}  the round's ``TINYTOWN_ROUND`` credential (see :mod:`tinytown.runner`)

The same placeholders (but ``{prompt}``) are filled into the values of the preset's ``env``.

``prompt = "stdin"`` writes the prompt to the CLI's standard input; ``prompt = "arg"``
appends it as the last argument unless an element already says ``{prompt}``.

Built-ins (checked against each tool's non-interactive mode):

* ``claude``  ``claude -p --mcp-config F --strict-mcp-config --allowedTools mcp__tinytown,Bash
  --permission-mode acceptEdits --output-format text`` with the prompt on stdin
  (``--mcp-config`` takes several values, so the prompt must not follow it as an argument).
  Only the agent's own server (``--strict-mcp-config``: a project ``.mcp.json`` of the
  town, e.g. the conductor's, is not loaded); its tools, shell commands and file edits run
  without prompts (headless Claude Code denies whatever would prompt; it refuses
  ``bypassPermissions`` as root).  Environment: :data:`CLAUDE_CODE_ENV`.
* ``codex``   ``codex exec --sandbox workspace-write --skip-git-repo-check --add-dir
  {git_common_dir} -c sandbox_workspace_write.network_access=true -c approval_policy="never"
  {codex_mcp_overrides} -``.  Codex has no ``--mcp-config``; it reads MCP servers from
  ``config.toml``, and ``-c key=value`` (values in TOML) overrides that file for one run:
  ``{codex_mcp_overrides}`` expands to the ``tinytown`` server bound to the agent
  (command, args, ``env_vars`` naming its environment, which the round's environment
  carries, and ``required``/``startup_timeout_sec``/``tool_timeout_sec`` from
  :data:`tinytown.mcp_config.CODEX_SERVER_SETTINGS`).  The MCP server runs outside Codex's
  sandbox; shell commands run inside it, where ``workspace-write`` lets them write the town
  directory and ``/tmp`` only.  ``--add-dir {git_common_dir}`` lets them commit (Codex keeps
  ``.git`` read-only otherwise; a commit in a worktree writes there too, and it is not
  ``{town}/.git`` for a town in a repository's subfolder or a separate git dir),
  ``network_access`` lets them reach Redis (``tt`` over the
  town's unix socket or TCP; the sandbox refuses every socket without it), and
  ``--skip-git-repo-check`` lets a town that is not a git repository run at all.  ``-``
  reads the prompt from stdin.
* ``aider``   ``aider --yes-always --no-git … --message-file F`` (a file, not ``--message``: one
  argv element is limited to 128 KiB on Linux).  Aider has no MCP and declines to run shell
  commands even with ``--yes-always``, so it cannot report (``reports=False``): its exit code
  decides.  ``--no-git``: with ``--yes-always`` aider would ``git init`` a town that is not a
  repository and commit its edits in one that is; the town's git is the user's.  It does
  not suggest shell commands, fetch URLs named in a message, check for updates or send
  analytics; plain output for the round log.
* ``gemini``  ``gemini --approval-mode yolo -p …`` with the prompt on stdin (``-p`` text is
  appended to it), ``GEMINI_CLI_HOME={gemini_home}`` and ``GEMINI_CLI_TRUST_WORKSPACE=true``.
  Gemini CLI takes MCP servers from settings files only, so each agent gets a private home
  whose ``.gemini/settings.json`` is the user's own with the agent's ``tinytown`` server
  added (trusted, with a tool timeout over receive's 300 s).  Trust: a folder Gemini has
  never seen exits 55 (and the environment variable, unlike ``--skip-trust``, which 0.61
  applies only after reading settings, also loads the project's ``.gemini/settings.json``);
  ``yolo``: headless Gemini denies every tool that would ask (shell, edits), so it runs
  them all without asking.
* ``scripted`` ``python -m tinytown_mcp.scripted_agent``: a deterministic MCP client of
  ``tinytown-mcp``; always available; what ``tt demo`` and the tests use.

``[agent_clis.NAME]`` tables in ``tinytown.toml`` add presets (or replace a built-in of the
same name, loudly): ``command = [...]``, ``prompt = "stdin" | "arg"``, ``env = {}``, and
``mcp_config_args = [...]`` appended after the command (e.g. ``["--mcp-config",
"{mcp_config}"]``), and ``reports = false`` for a CLI that cannot report its task (then its
exit code decides: 0 completed, else failed, recorded as ``decided_by = "exit_code"``).
They run only once the user trusted that file (:mod:`tinytown.trust`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tinytown.config import TownConfig, TownPaths
from tinytown.errors import Invalid
from tinytown.mcp_config import ROUND_ENV, SERVER_KEY, TOOL_TIMEOUT_S, codex_server_table, env_reference
from tinytown.trust import require_trusted, warn_override

log = logging.getLogger("tinytown.presets")

PromptMode = Literal["stdin", "arg"]

CODEX_MCP_PLACEHOLDER = "{codex_mcp_overrides}"
GEMINI_HOME_PLACEHOLDER = "{gemini_home}"
GIT_DIR_PLACEHOLDER = "{git_common_dir}"

CLAUDE_CODE_ENV = {
    # Headless Claude Code connects MCP servers in the background: without these the first
    # model turn may start before tinytown-mcp is up (it waits at most 5 s by default, and a
    # Python server on a busy machine can take longer).
    "MCP_CONNECTION_NONBLOCKING": "0",
    "MCP_CONNECT_TIMEOUT_MS": "60000",
    # A tool call may last longer than the longest receive.
    "MCP_TOOL_TIMEOUT": str(TOOL_TIMEOUT_S * 1000),
}
"""The environment the ``claude`` preset adds to a round (also what the README tells a
headless attached session to set)."""
SCRIPTED = "scripted"
GEMINI_PROMPT = "Your instructions are above (from standard input): follow them."


@dataclass(frozen=True)
class RoundInputs:
    """What a round fills into a preset's template."""

    prompt: str
    prompt_file: Path
    mcp_config: Path
    agent: str
    town: Path


@dataclass(frozen=True)
class Preset:
    name: str
    command: tuple[str, ...]
    prompt: PromptMode = "stdin"
    env: Mapping[str, str] = field(default_factory=dict)
    install_hint: str = ""
    builtin: bool = True
    # Whether the CLI can report a task (MCP tools or a shell for `tt`).  One that cannot
    # (aider) has its tasks decided by its exit code, recorded as ``decided_by = exit_code``.
    reports: bool = True

    @property
    def program(self) -> str:
        """The executable the preset runs (``{python}`` resolved)."""
        return self.command[0].replace("{python}", sys.executable)

    def locate(self, path: str | None = None) -> str:
        """The full path of :attr:`program`.

        Raises:
            Invalid: the program is not on PATH (or not an executable file), saying how to
                install it.
        """
        program = self.program
        found = shutil.which(program, path=path if path is not None else os.environ.get("PATH"))
        if found:
            return found
        hint = f"; install it with `{self.install_hint}`" if self.install_hint else ""
        where = "is not an executable file" if os.sep in program else "is not on PATH"
        raise Invalid(
            f"preset {self.name!r} runs `{program}`, which {where}{hint}, or pick another "
            f"preset with --cli"
        )

    def argv(self, inputs: RoundInputs, mcp_server: Mapping[str, object] | None = None) -> list[str]:
        """The command line of one round.

        ``mcp_server`` is the ``tinytown`` entry of the generated MCP config; the ``codex``
        preset turns it into ``-c`` overrides.
        """
        out: list[str] = []
        says_prompt = False
        for template in self.command:
            if template == CODEX_MCP_PLACEHOLDER:
                out += codex_mcp_overrides(mcp_server or {})
                continue
            element = _fill(template, inputs)
            if "{prompt}" in element:
                says_prompt = True
                element = element.replace("{prompt}", inputs.prompt)
            out.append(element)
        if self.prompt == "arg" and not says_prompt:
            out.append(inputs.prompt)
        return out

    def round_env(self, inputs: RoundInputs) -> dict[str, str]:
        """The preset's ``env`` with its placeholders filled (``{prompt}`` is not one here)."""
        return {key: _fill(value, inputs) for key, value in self.env.items()}

    def server_env(self, mcp_server: Mapping[str, object] | None) -> dict[str, str]:
        """Variables the round's environment must carry for the CLI to hand them to the MCP
        server: the server entry's ``env`` for a preset that passes the server as Codex
        overrides (which name them only), else nothing."""
        if CODEX_MCP_PLACEHOLDER not in self.command or not mcp_server:
            return {}
        raw_env = mcp_server.get("env", {})
        env = {str(k): str(v) for k, v in raw_env.items()} if isinstance(raw_env, dict) else {}
        return {k: v for k, v in env.items() if env_reference(v) is None}

    def stdin(self, prompt: str) -> bytes | None:
        """What to write to the CLI's standard input (``None``: nothing, it is closed)."""
        return prompt.encode("utf-8") if self.prompt == "stdin" else None


def _fill(template: str, inputs: RoundInputs) -> str:
    """Replace the placeholders (but ``{prompt}``) in one element of a template."""
    values: dict[str, Callable[[], str]] = {
        "{prompt_file}": lambda: str(inputs.prompt_file),
        "{mcp_config}": lambda: str(inputs.mcp_config),
        "{agent}": lambda: inputs.agent,
        "{town}": lambda: str(inputs.town),
        "{python}": lambda: sys.executable,
        GIT_DIR_PLACEHOLDER: lambda: str(git_dir(inputs.town)),
        GEMINI_HOME_PLACEHOLDER: lambda: str(gemini_home(inputs)),
        "{round_credential}": lambda: str(round_server(inputs).get("env", {}).get(ROUND_ENV, "")),
    }
    for key, value in values.items():
        if key in template:
            template = template.replace(key, value())
    return template


def git_dir(town: Path) -> Path:
    """What ``{git_common_dir}`` stands for: the git common dir of the town's repository
    (``town/.git`` when there is none, a path that does not exist)."""
    from tinytown.worktrees import common_git_dir

    return common_git_dir(town) or town / ".git"


def round_server(inputs: RoundInputs) -> dict[str, Any]:
    """The ``tinytown`` entry of the round's generated MCP config (with the round's
    credential in its ``env``), else a plain entry for the agent."""
    from tinytown.mcp_config import SERVER_KEY, server_entry

    try:
        entry = json.loads(inputs.mcp_config.read_text(encoding="utf-8"))["mcpServers"][SERVER_KEY]
    except (OSError, ValueError, KeyError, TypeError):
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("env", {}), dict):
        return server_entry(inputs.town, inputs.agent)
    return entry


def gemini_home(inputs: RoundInputs) -> Path:
    """Write the agent's private Gemini CLI home (``GEMINI_CLI_HOME``) and return its path.

    ``.tt/gemini/<agent>/.gemini/settings.json`` is the user's own ``settings.json`` (from
    ``$GEMINI_CLI_HOME/.gemini``, else ``~/.gemini``; never changed) with ``mcpServers.tinytown``
    set to the round's server; every other entry of the user's ``.gemini`` (credentials,
    extensions, memory, history) is linked, so Gemini CLI otherwise behaves as it does for
    the user.  Gemini CLI skips a system settings file that root does not own, so a private
    home is the one place a non-root tinytown can give it per-agent settings.  Mode 0600: it
    may hold the Redis password.

    A project ``.gemini/settings.json`` with its own ``tinytown`` entry still wins over these
    settings (Gemini CLI merges workspace over user): a warning says so unless that entry
    follows ``$TINYTOWN_AGENT`` (as ``tt mcp config --client gemini`` writes it).

    Raises:
        Invalid: the user's settings file is not a JSON object.
    """
    from tinytown.mcp_config import SERVER_KEY, gemini_server_entry

    home = TownPaths(inputs.town).runtime / "gemini" / inputs.agent
    private = home / ".gemini"
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    user_dir = Path(os.environ.get("GEMINI_CLI_HOME") or Path.home()) / ".gemini"
    settings: dict[str, object] = {}
    if user_dir.resolve() != private.resolve():
        settings = _json_object(user_dir / "settings.json")
        for item in user_dir.iterdir() if user_dir.is_dir() else ():
            link = private / item.name
            if item.name != "settings.json" and not link.is_symlink() and not link.exists():
                link.symlink_to(item)
    servers = settings.get("mcpServers")
    servers = dict(servers) if isinstance(servers, dict) else {}
    servers[SERVER_KEY] = gemini_server_entry(round_server(inputs), inputs.agent, follow_env=False)
    settings["mcpServers"] = servers
    path = private / "settings.json"
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2)
    os.replace(tmp, path)
    project = _json_object(Path(inputs.town) / ".gemini" / "settings.json")
    shadow = (project.get("mcpServers") or {}) if isinstance(project.get("mcpServers"), dict) else {}
    theirs = shadow.get(SERVER_KEY) if isinstance(shadow, dict) else None
    if theirs is not None and "TINYTOWN_AGENT" not in json.dumps(theirs):
        log.warning("%s/.gemini/settings.json has its own mcpServers.tinytown, which Gemini CLI "
                    "puts over %s's: make its --agent ${TINYTOWN_AGENT:-NAME} (tt mcp config "
                    "--client gemini prints it so)", inputs.town, inputs.agent)
    return home


def _json_object(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise Invalid(f"cannot read {path}: {error}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        raise Invalid(f"{path} is not JSON tinytown can read (comments are not supported)") from None
    if not isinstance(data, dict):
        raise Invalid(f"{path} is not a JSON object")
    return data


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (json.dumps never emits the \/ escape).
    return json.dumps(value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}"
                               for k, v in sorted(value.items())) + "}"
    return _toml_string(str(value))


def codex_mcp_overrides(server: Mapping[str, object]) -> list[str]:
    """``-c`` overrides that give Codex the ``tinytown`` MCP server for one run.

    The server's environment (the Redis URL with its password, the round credential) stays
    off the command line, where ``ps`` and logs would show it: ``env_vars`` names the
    variables Codex passes on from its own environment, which the round sets (see
    :meth:`Preset.server_env`).  ``env`` is set to ``{}`` so a
    ``[mcp_servers.tinytown.env]`` of the user's own ``config.toml`` cannot leak in.
    """
    raw_args = server.get("args", [])
    table = codex_server_table({
        "command": str(server.get("command", "tinytown-mcp")),
        "args": [str(a) for a in raw_args] if isinstance(raw_args, list) else [],
    })
    table["env"] = {}
    table["env_vars"] = sorted(_server_env(server))
    out: list[str] = []
    for key, value in table.items():
        out += ["-c", f"mcp_servers.{SERVER_KEY}.{key}={_toml_value(value)}"]
    return out


def _server_env(server: Mapping[str, object]) -> dict[str, str]:
    """The server's environment as variables to set: a ``${VAR}`` reference (how the
    generated config carries the Redis URL without its password) names a variable the
    environment already has, so it maps to that variable's own name with no value to set."""
    raw_env = server.get("env", {})
    env = {str(k): str(v) for k, v in raw_env.items()} if isinstance(raw_env, dict) else {}
    out: dict[str, str] = {}
    for key, value in env.items():
        name = env_reference(value)
        if name is None:
            out[key] = value
        else:
            out.setdefault(name, "")
    return out


BUILTIN_PRESETS: dict[str, Preset] = {
    "claude": Preset(
        "claude",
        ("claude", "-p", "--mcp-config", "{mcp_config}", "--strict-mcp-config",
         "--allowedTools", "mcp__tinytown,Bash", "--permission-mode", "acceptEdits",
         "--output-format", "text"),
        prompt="stdin",
        env=CLAUDE_CODE_ENV,
        install_hint="npm install -g @anthropic-ai/claude-code",
    ),
    "codex": Preset(
        "codex",
        ("codex", "exec", "--sandbox", "workspace-write", "--skip-git-repo-check",
         "--add-dir", GIT_DIR_PLACEHOLDER, "-c", "sandbox_workspace_write.network_access=true",
         "-c", 'approval_policy="never"', CODEX_MCP_PLACEHOLDER, "-"),
        prompt="stdin",
        install_hint="npm install -g @openai/codex",
    ),
    "aider": Preset(
        "aider",
        ("aider", "--yes-always", "--no-git", "--no-suggest-shell-commands", "--no-detect-urls",
         "--no-check-update", "--no-show-release-notes", "--no-analytics", "--no-pretty",
         "--no-fancy-input", "--message-file", "{prompt_file}"),
        prompt="stdin",
        install_hint="python -m pip install aider-install && aider-install",
        reports=False,
    ),
    "gemini": Preset(
        "gemini",
        ("gemini", "--approval-mode", "yolo", "-p", GEMINI_PROMPT),
        prompt="stdin",
        # TINYTOWN_ROUND for a project entry (from `tt mcp config --client gemini`) that wins
        # over the private one: it passes the variable on to the round's server
        env={"GEMINI_CLI_HOME": GEMINI_HOME_PLACEHOLDER, "GEMINI_CLI_TRUST_WORKSPACE": "true",
             ROUND_ENV: "{round_credential}"},
        install_hint="npm install -g @google/gemini-cli",
    ),
    SCRIPTED: Preset(
        SCRIPTED,
        ("{python}", "-m", "tinytown_mcp.scripted_agent"),
        prompt="stdin",
        install_hint="pip install tinytown",
    ),
}


def all_presets(config: TownConfig) -> dict[str, Preset]:
    """Built-ins plus the ``[agent_clis.NAME]`` tables of ``tinytown.toml`` (which win)."""
    presets = dict(BUILTIN_PRESETS)
    for name, settings in config.agent_clis.items():
        command = (*settings.command, *settings.mcp_config_args)
        presets[name] = Preset(
            name, tuple(command), prompt=settings.prompt, env=dict(settings.env), builtin=False,
            reports=settings.reports,
        )
    return presets


def preset_names(config: TownConfig) -> list[str]:
    return sorted(all_presets(config))


def resolve_preset(config: TownConfig, cli: str | None) -> Preset:
    """The preset a spawn names (``None``: the town's ``default_cli``).

    Raises:
        Invalid: no preset given and no ``default_cli``, or no preset of that name; the
            message lists the presets that exist.
    """
    choices = ", ".join(preset_names(config))
    name = cli if cli is not None else config.default_cli
    if name is None:
        raise Invalid(
            f"no --cli given and tinytown.toml sets no default_cli; presets: {choices}"
        )
    preset = all_presets(config).get(name.strip())
    if preset is None:
        raise Invalid(
            f"no preset named {name!r}; presets: {choices} (add one as [agent_clis.NAME] in "
            "tinytown.toml)"
        )
    if not preset.builtin:  # it comes from tinytown.toml: only once the user trusted the file
        require_trusted(config)
        if preset.name in BUILTIN_PRESETS:
            warn_override(preset.name, config.source[0] if config.source else None)
    return preset


def round_env(
    base: Mapping[str, str], preset: Preset, extra: Mapping[str, str | None],
    inputs: RoundInputs | None = None,
) -> dict[str, str]:
    """The environment of a round: ``base``, the preset's ``env`` (placeholders filled from
    ``inputs``), then ``extra`` (``None`` removes a variable)."""
    env = dict(base)
    env.update(preset.round_env(inputs) if inputs is not None else preset.env)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env

