"""``tt backlog add --file FILE``: many backlog tasks from a file (:mod:`tinytown.bulk`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tinytown.cli.app import fail, print_json, run

if TYPE_CHECKING:
    from tinytown.bulk import BulkResult
    from tinytown.town import Town


def add_from_file(
    ctx: typer.Context, file: str | None, description: str | None, who: str, json_out: bool
) -> None:
    """Read ``file`` (``-``: stdin), add its tasks, print what was added.  Progress goes to
    stderr when the file holds more than one slice of tasks."""
    from tinytown.bulk import SLICE, parse_task_lines
    from tinytown.errors import Invalid

    if file is None or description is not None:
        fail(Invalid("give a description, or --file FILE (not both)"))
    try:
        if file == "-":  # bytes, decoded strictly: the text stream would pass bad bytes on as surrogates
            lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
        else:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(Invalid(f"cannot read {'stdin' if file == '-' else file}: {exc}"))
    try:
        specs = parse_task_lines(lines)
    except Invalid as exc:
        fail(Invalid(f"{file}: {exc.message}; nothing was added"))
    if not specs:
        fail(Invalid(f"{file} holds no tasks"))

    def progress(done: int, total: int) -> None:
        if total > SLICE:
            sys.stderr.write(f"added {done}/{total} tasks\n")
            sys.stderr.flush()

    async def go(town: Town) -> BulkResult:
        return await town.add_tasks(specs, by=who, progress=progress)

    result = run(ctx, go)
    if json_out:
        print_json(result)
        return
    from tinytown.cli.render import say

    numbers = f" (#{result.tasks[0].number}-#{result.tasks[-1].number})" if result.tasks else ""
    say(f"added {result.added} tasks to the backlog{numbers}")
