"""Entry point of ``tt``: registers every command module on the app and runs it."""

from __future__ import annotations

import logging
import sys
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


def command() -> Any:
    """The ``tt`` command tree, its help tidied (:mod:`tinytown.cli.help`)."""
    return tidy(typer.main.get_command(app))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mask_log_handlers()
    try:
        command()(prog_name="tt")
    except KeyboardInterrupt:
        sys.stderr.write("tt: interrupted\n")
        sys.exit(130)
    except Exception as exc:  # outermost edge: one line for the user, traceback in the log
        logging.getLogger("tinytown.cli").debug("unexpected error", exc_info=True)
        sys.stderr.write(f"tt: unexpected error: {type(exc).__name__}: {scrub(str(exc))}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
