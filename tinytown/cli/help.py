"""Help that reads cleanly.

Typer prints a type beside every option (``<bool>`` for a flag, ``<float range> [x>=0]``)
and braces around required arguments (``tt send {to} {message}``).  :func:`tidy` walks the
built command tree once and gives every parameter a conventional metavar instead:
``tt send [OPTIONS] TO MESSAGE``, ``--timeout TIMEOUT``, nothing after a flag.
Typer now carries its own copy of click, so parameters are recognised by their attributes,
not by click's classes.  It also
joins the single line breaks of docstrings, so a command's summary is one paragraph.
Only help output changes: parsing and range checks are click's, as before.
"""

from __future__ import annotations

import re
from typing import Any

from tinytown.prompting import unwrap

_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def tidy(command: Any) -> Any:
    """Tidy ``command`` and every subcommand in place; returns it."""
    command.help = _literal(unwrap(command.help))
    command.short_help = _literal(unwrap(command.short_help))
    for param in command.params:
        _tidy_param(param)
    _help_option = command.get_help_option  # made per context, so tidied as it is made

    def help_option(ctx: Any) -> Any:
        option = _help_option(ctx)
        if option is not None:
            _tidy_param(option)
        return option

    command.get_help_option = help_option
    for sub in (getattr(command, "commands", None) or {}).values():
        tidy(sub)
    return command


def _literal(text: str | None) -> str | None:
    """Keep ``[agent_clis.NAME]`` as written: Typer renders help as Rich markup, which would
    take it for a style tag and drop it (the same escape as ``rich.markup.escape``, without
    importing Rich on every ``tt`` start)."""
    return _MARKUP_TAG.sub(r"\1\1\\\2", text) if text else text


def _tidy_param(param: Any) -> None:
    if getattr(param, "help", None):
        param.help = _literal(param.help)
    is_argument = param.param_type_name == "argument"
    if getattr(param, "is_flag", False):
        param.metavar = ""
    elif param.metavar is None:
        param.metavar = (param.name or "value").upper().replace("_", "-")
    # The allowed range is checked on parsing; "[x>=0]" after every number says little.
    _override(param, "_get_number_range_help_str", lambda: None)
    if is_argument:
        shown = param.metavar + ("..." if param.nargs != 1 else "")
        _override(param, "_usage_display_name", lambda: shown if param.required else f"[{shown}]")
        _override(param, "display_type_rich", lambda ctx: None)  # the name says it already


def _override(param: Any, attribute: str, value: Any) -> None:
    """Replace a Typer display hook on this one parameter, where this Typer has it."""
    if hasattr(param, attribute):
        setattr(param, attribute, value)
