"""Entry point of ``tt``: registers every command module on the app and runs it."""

from __future__ import annotations

import atexit
import copy
import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

import typer

from tinytown.cli import (  # noqa: F401  (they register commands on app)
    commands,
    dashboard_cmd,
    lifecycle,
    logs_cmd,
    mcp_cmd,
    plan_cmd,
    review_cmd,
    serve_cmd,
    stats_cmd,
    stop_cmd,
    trust_cmd,
)
from tinytown.cli.app import app
from tinytown.cli.help import tidy
from tinytown.masking import mask_log_handlers, scrub


def command(argv: Sequence[str] | None = None) -> Any:
    """The ``tt`` command tree, its help tidied (:mod:`tinytown.cli.help`).

    Given the command line (``argv``), only the command it names is built, under the same
    root: building all ~50 commands cost every ``tt send`` ~12 ms of CPU
    (bench/cli_startup.py).  No command, ``--help`` or ``--version`` first, or a name that
    is not a command gets the whole tree, so help and "No such command" read as ever.
    """
    name = _named_command(argv) if argv is not None else None
    if name is not None:
        tree = copy.copy(app)  # the same root (callback, settings) holding one command
        tree.registered_commands = [c for c in app.registered_commands if _name_of(c) == name]
        tree.registered_groups = [g for g in app.registered_groups if g.name == name]
        if tree.registered_commands or tree.registered_groups:
            built = typer.main.get_command(tree)
            if name in getattr(built, "commands", {}):
                return tidy(built)
    return tidy(typer.main.get_command(app))


def _named_command(argv: Sequence[str]) -> str | None:
    """The command ``tt ARGV`` runs: the first word after the root's options (``--town``
    and its value); ``None`` when anything else comes first."""
    words = iter(argv)
    for word in words:
        if word == "--town":
            next(words, None)
        elif not word.startswith("--town="):
            return None if word.startswith("-") else word
    return None


def _name_of(info: Any) -> str | None:
    """A registered command's name: given, else Typer's, from its function's name."""
    if info.name:
        return str(info.name)
    return info.callback.__name__.lower().replace("_", "-") if info.callback else None


def main() -> None:
    # At exit the interpreter's last garbage collections walk every object the libraries
    # made (pydantic's schemas, Typer, redis-py): ~40 ms CPU, a fifth of a `tt send`, for
    # memory the process is about to give back.  Objects alive then are frozen out of those
    # collections; everything else of an exit happens as ever (atexit handlers, logging's
    # flush, streams flushed and closed, modules cleared).
    atexit.register(gc.freeze)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mask_log_handlers()
    for number, arg in enumerate(sys.argv[1:], 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            sys.stderr.write(f"tt: invalid: argument {number} ({shown}) is not valid UTF-8; "
                             "Tinytown keeps text as UTF-8\n")
            sys.exit(2)
    try:
        command(sys.argv[1:])(prog_name="tt")
    except KeyboardInterrupt:
        sys.stderr.write("tt: interrupted\n")
        sys.exit(130)
    except Exception as exc:  # outermost edge: one line for the user, traceback in the log
        logging.getLogger("tinytown.cli").debug("unexpected error", exc_info=True)
        sys.stderr.write(f"tt: unexpected error: {type(exc).__name__}: {scrub(str(exc))}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
