"""`tt --help` and every command's help read cleanly, and MCP tool descriptions are prose.

The help of every command is rendered by one subprocess walking the real `tt` command tree
(the one `tt` runs); one command is also checked through the `tt` entry point itself.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

from conftest import clean_env

from tinytown_mcp.tools import catalogue

RENDER_ALL = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from tinytown.cli.main import command

    def paths(cmd, prefix):
        yield prefix
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            if not getattr(sub, "hidden", False):
                yield from paths(sub, prefix + [name])

    def render(cmd, path):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                cmd.main([*path, "--help"], prog_name="tt", standalone_mode=False)
            except SystemExit:
                pass
        return buf.getvalue()

    whole, alone = {}, {}
    for path in paths(command(), []):
        whole[" ".join(path)] = render(command(), path)
        # as `tt` runs it: the tree built for this command line only
        alone[" ".join(path)] = render(command([*path, "--help"]), path)
    print(json.dumps({"whole": whole, "alone": alone}))
    """
)


@functools.cache
def render_helps() -> dict[str, dict[str, str]]:
    """{"whole": {command path: its help text}, "alone": the same, each from the tree `tt`
    builds for that command line}, for every visible command and group of `tt`."""
    done = subprocess.run([sys.executable, "-c", RENDER_ALL], env=clean_env(), capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    helps: dict[str, dict[str, str]] = json.loads(done.stdout)
    return helps


def render_every_help() -> dict[str, str]:
    """{command path: its help text}, for every visible command and group of `tt`."""
    return render_helps()["whole"]


def test_tt_builds_only_the_command_it_runs_and_the_whole_tree_for_help_or_a_wrong_name() -> None:
    from tinytown.cli.main import command

    assert set(command(["send", "bob", "hi"]).commands) == {"send"}
    assert set(command(["--town", "/x", "backlog", "add", "--file", "-"]).commands) == {"backlog"}
    assert set(command(["--town=/x", "list"]).commands) == {"list"}
    whole = set(command().commands)
    assert {"send", "inbox", "backlog", "mcp", "agent"} <= whole
    for argv in ([], ["--help"], ["-h", "send"], ["--version"], ["sned", "bob"], ["--town"],
                 ["list-agents"]):  # (the function behind `tt list`)
        assert set(command(argv).commands) == whole, argv


def test_a_command_built_alone_has_the_help_it_has_in_the_whole_tree() -> None:
    helps = render_helps()
    assert helps["alone"] == helps["whole"]


def test_every_commands_help_shows_names_not_typer_type_tags() -> None:
    helps = render_every_help()
    assert {"", "send", "assign", "status", "task show", "backlog add", "mcp config"} <= set(helps)
    for path, text in helps.items():
        assert "Usage: tt" in text, (path, text)
        for tag in ("<bool>", "<str>", "<int", "<float", "<path>", "<list", " range", "[x>"):
            assert tag not in text, f"`tt {path} --help` shows {tag!r}:\n{text}"
        usage = next(line for line in text.splitlines() if "Usage: tt" in line)
        assert "{" not in usage, f"`tt {path} --help` shows an argument in braces: {usage}"


def test_every_command_but_the_two_servers_offers_json() -> None:
    """The README: "Every command takes `--json`" (`tt dashboard` and `tt serve` run until
    Ctrl-C and print only their address)."""
    helps = render_every_help()
    commands = {path: text for path, text in helps.items() if path and "Commands" not in text}
    assert {"send", "mcp hooks", "task show", "token add"} <= set(commands)
    without = sorted(path for path, text in commands.items() if "--json" not in text)
    assert without == ["dashboard", "serve"], without


def test_square_brackets_in_help_are_shown_not_taken_for_markup() -> None:
    helps = render_every_help()
    assert "[agent_clis.NAME]" in helps["spawn"]


def test_a_commands_usage_line_names_its_arguments_in_capitals() -> None:
    done = subprocess.run([sys.executable, "-m", "tinytown.cli.main", "send", "--help"], env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage: tt send [OPTIONS] TO MESSAGE" in done.stdout
    assert "--priority  -p      PRIORITY" in done.stdout


def test_a_command_summary_is_one_paragraph_however_its_docstring_is_wrapped() -> None:
    from tinytown.cli.main import command

    history = command().commands["history"]
    first_paragraph = history.help.split("\n\n")[0]
    assert "tasks by #N" in first_paragraph  # the docstring breaks the line after "tasks"
    assert "\n" not in first_paragraph


def test_mcp_tool_descriptions_are_prose_without_docstring_indentation() -> None:
    for tool in catalogue():
        assert tool.description, tool.name
        assert "\n    " not in tool.description, (tool.name, tool.description)
        assert "  " not in tool.description.replace(".  ", ". "), (tool.name, tool.description)
