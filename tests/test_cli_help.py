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

    out = {}
    for path in paths(command(), []):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                command().main([*path, "--help"], prog_name="tt", standalone_mode=False)
            except SystemExit:
                pass
        out[" ".join(path)] = buf.getvalue()
    print(json.dumps(out))
    """
)


@functools.cache
def render_every_help() -> dict[str, str]:
    """{command path: its help text}, for every visible command and group of `tt`."""
    done = subprocess.run([sys.executable, "-c", RENDER_ALL], env=clean_env(), capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    helps: dict[str, str] = json.loads(done.stdout)
    return helps


def test_every_commands_help_shows_names_not_typer_type_tags() -> None:
    helps = render_every_help()
    assert {"", "send", "assign", "status", "task show", "backlog add", "mcp config"} <= set(helps)
    for path, text in helps.items():
        assert "Usage: tt" in text, (path, text)
        for tag in ("<bool>", "<str>", "<int", "<float", "<path>", "<list", " range", "[x>"):
            assert tag not in text, f"`tt {path} --help` shows {tag!r}:\n{text}"
        usage = next(line for line in text.splitlines() if "Usage: tt" in line)
        assert "{" not in usage, f"`tt {path} --help` shows an argument in braces: {usage}"


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
