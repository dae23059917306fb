"""Agent CLI presets: argv templates a runner fills in for each round.

A spawn names a preset; no client can pass a raw command.  A preset is an argv template,
never a shell string.  Each element may hold these placeholders, replaced textually (so a
brace anywhere else is left alone):

    {prompt}        the round's prompt text          {prompt_file}  a file holding it
    {mcp_config}    the generated ``.mcp.json``      {agent}        the agent's name
    {town}          the town directory               {python}       this Python interpreter

``prompt = "stdin"`` writes the prompt to the CLI's standard input; ``prompt = "arg"``
appends it as the last argument unless an element already says ``{prompt}``.

Built-ins (checked against each tool's non-interactive mode):

* ``claude``  ``claude -p --mcp-config F --allowedTools mcp__tinytown --permission-mode
  acceptEdits --output-format text`` with the prompt on stdin (``--mcp-config`` takes several
  values, so the prompt must not follow it as an argument).
* ``codex``   ``codex exec --full-auto -c mcp_servers.tinytown.command=… -c
  mcp_servers.tinytown.args=[…] -c mcp_servers.tinytown.env={…} -``: Codex has no
  ``--mcp-config``; it reads MCP servers from ``config.toml``, and ``-c key=value`` (values in
  TOML) overrides that file for one run.  ``-`` reads the prompt from stdin.
* ``aider``   ``aider --yes-always --message-file F`` (a file, not ``--message``: one argv
  element is limited to 128 KiB on Linux).  Aider has no MCP and cannot run ``tt``, so it
  cannot report (``reports=False``): its exit code decides.
* ``gemini``  ``gemini -p PROMPT``.  Gemini CLI takes MCP servers from its settings.json only.
* ``scripted`` ``python -m tinytown_mcp.scripted_agent``: a deterministic MCP client of
  ``tinytown-mcp``; always available; what ``tt demo`` and the tests use.

``[agent_clis.NAME]`` tables in ``tinytown.toml`` add presets (or replace a built-in of the
same name): ``command = [...]``, ``prompt = "stdin" | "arg"``, ``env = {}``, and
``mcp_config_args = [...]`` appended after the command (e.g. ``["--mcp-config",
"{mcp_config}"]``), and ``reports = false`` for a CLI that cannot report its task (then its
exit code decides: 0 completed, else failed, recorded as ``decided_by = "exit_code"``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tinytown.config import TownConfig
from tinytown.errors import Invalid

PromptMode = Literal["stdin", "arg"]

CODEX_MCP_PLACEHOLDER = "{codex_mcp_overrides}"
SCRIPTED = "scripted"


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
        values = {
            "{prompt_file}": str(inputs.prompt_file),
            "{mcp_config}": str(inputs.mcp_config),
            "{agent}": inputs.agent,
            "{town}": str(inputs.town),
            "{python}": sys.executable,
        }
        out: list[str] = []
        says_prompt = False
        for template in self.command:
            if template == CODEX_MCP_PLACEHOLDER:
                out += codex_mcp_overrides(mcp_server or {})
                continue
            element = template
            for key, value in values.items():
                element = element.replace(key, value)
            if "{prompt}" in element:
                says_prompt = True
                element = element.replace("{prompt}", inputs.prompt)
            out.append(element)
        if self.prompt == "arg" and not says_prompt:
            out.append(inputs.prompt)
        return out

    def stdin(self, prompt: str) -> bytes | None:
        """What to write to the CLI's standard input (``None``: nothing, it is closed)."""
        return prompt.encode("utf-8") if self.prompt == "stdin" else None


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (json.dumps never emits the \/ escape).
    return json.dumps(value)


def codex_mcp_overrides(server: Mapping[str, object]) -> list[str]:
    """``-c`` overrides that give Codex the ``tinytown`` MCP server for one run."""
    command = str(server.get("command", "tinytown-mcp"))
    raw_args = server.get("args", [])
    args = [str(a) for a in raw_args] if isinstance(raw_args, list) else []
    raw_env = server.get("env", {})
    env = {str(k): str(v) for k, v in raw_env.items()} if isinstance(raw_env, dict) else {}
    out = ["-c", f"mcp_servers.tinytown.command={_toml_string(command)}",
           "-c", f"mcp_servers.tinytown.args=[{', '.join(_toml_string(a) for a in args)}]"]
    if env:
        table = ", ".join(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in sorted(env.items()))
        out += ["-c", f"mcp_servers.tinytown.env={{{table}}}"]
    return out


BUILTIN_PRESETS: dict[str, Preset] = {
    "claude": Preset(
        "claude",
        ("claude", "-p", "--mcp-config", "{mcp_config}", "--allowedTools", "mcp__tinytown",
         "--permission-mode", "acceptEdits", "--output-format", "text"),
        prompt="stdin",
        install_hint="npm install -g @anthropic-ai/claude-code",
    ),
    "codex": Preset(
        "codex",
        ("codex", "exec", "--full-auto", CODEX_MCP_PLACEHOLDER, "-"),
        prompt="stdin",
        install_hint="npm install -g @openai/codex",
    ),
    "aider": Preset(
        "aider",
        ("aider", "--yes-always", "--message-file", "{prompt_file}"),
        prompt="stdin",
        install_hint="python -m pip install aider-install && aider-install",
        reports=False,
    ),
    "gemini": Preset(
        "gemini",
        ("gemini", "-p", "{prompt}"),
        prompt="arg",
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
    return preset


def round_env(
    base: Mapping[str, str], preset: Preset, extra: Mapping[str, str | None]
) -> dict[str, str]:
    """The environment of a round: ``base``, the preset's ``env``, then ``extra`` (``None``
    removes a variable)."""
    env = dict(base)
    env.update(preset.env)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env

