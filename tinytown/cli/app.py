"""The Typer app, its global options, and the edge where async Town calls run.

Every command module registers on :data:`app` and calls :func:`run` with a coroutine
function taking the open :class:`~tinytown.town.Town`.  Domain errors become one line on
stderr and exit code 1; usage errors are Typer's exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from tinytown.errors import TinytownError, Unavailable
from tinytown.models import public_json

if TYPE_CHECKING:
    from tinytown.town import Town

T = TypeVar("T")

app = typer.Typer(
    name="tt",
    help="Tinytown: coding agents that work together through Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@dataclass
class CliState:
    town: Path | None = None


def _print_version(value: bool) -> None:
    if value:
        from tinytown import __version__

        typer.echo(f"tinytown {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    ctx: typer.Context,
    town: Annotated[
        Path | None,
        typer.Option("--town", help="Town directory (default: $TINYTOWN_TOWN, else search upward)."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the Tinytown version and exit.", is_eager=True,
                     callback=_print_version),
    ] = False,
) -> None:
    ctx.obj = CliState(town=town)


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


def fail(error: TinytownError | str, code: int = 1) -> NoReturn:
    """One line on stderr, no traceback, exit ``code``."""
    from tinytown.masking import scrub

    typer.echo(f"tt: {scrub(str(error))}", err=True)
    raise typer.Exit(code)


def run(ctx: typer.Context, fn: Callable[[Town], Awaitable[T]], *, start_redis: bool = True) -> T:
    """Open the town, run ``fn(town)`` on an event loop, close; map errors to exit 1."""
    from tinytown.town import Town

    town_path = state(ctx).town

    managed = False

    async def go() -> T:
        nonlocal managed
        town = await Town.open(town_path, start_redis=start_redis)
        managed = town.config.redis.url is None
        try:
            return await fn(town)
        finally:
            await town.close()

    try:
        # asyncio.run, not anyio.run: importing anyio's asyncio backend costs ~25 ms of every
        # `tt` start-up; anyio calls inside the Town still work on this loop (the backend is
        # then loaded on first use only).
        return asyncio.run(go())
    except Unavailable as error:
        if managed:
            from tinytown.connect import managed_hint

            error = managed_hint(error)
        fail(error)
    except TinytownError as error:
        fail(error)


def run_plain(fn: Callable[[], T]) -> T:
    """Run a synchronous library call with the same error mapping as :func:`run`."""
    try:
        return fn()
    except TinytownError as error:
        fail(error)


to_jsonable = public_json  # one definition for every face: tinytown.models


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_example(name: str, text: str, json_out: bool) -> None:
    """An annotated example file as it is, or with --json as ``{"file", "text", "values"}``
    (``values``: the file parsed, what its keys are set to)."""
    if not json_out:
        sys.stdout.write(text)
        return
    import tomllib

    print_json({"file": name, "text": text, "values": tomllib.loads(text)})


def is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def identity(explicit: str | None = None) -> str:
    """Who the human speaks as: ``--from``, else ``TINYTOWN_AGENT``, else ``conductor``."""
    return explicit or os.environ.get("TINYTOWN_AGENT") or "conductor"
