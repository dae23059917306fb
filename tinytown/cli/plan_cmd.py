"""``tt plan FILE [--dry-run]`` and ``tt backlog assign [AGENT | --idle]``: handing out work in bulk.

``tt plan`` reads a TOML plan (see :mod:`tinytown.plans` and the README's "Plans and
dependencies") and creates every task in one atomic write, or with ``--dry-run`` only
checks it and prints the order the tasks can start in.  ``tt backlog assign`` gives backlog
tasks to an agent, or one to each idle agent, highest priority first.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tinytown.cli.app import JsonOption, app, fail, identity, print_example, print_json, run
from tinytown.cli.commands import backlog_app

if TYPE_CHECKING:
    from tinytown.models import Task
    from tinytown.plans import PlannedTask, PlanResult


@app.command()
def plan(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(help="The plan: a TOML file of [[tasks]] tables.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", help="Check the plan and print the order its tasks can start in; create nothing.",
    )] = False,
    example: Annotated[bool, typer.Option(
        "--example", help="Print an example plan file (every field explained) and exit.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Create every task of a plan file at once (all or nothing), dependencies included."""
    from tinytown.errors import Invalid
    from tinytown.plans import parse_plan

    if example:
        from tinytown.config import example_text

        print_example("plan.example.toml", example_text("plan.example.toml"), json_out)
        return
    if file is None:
        fail(Invalid("name the plan file (tt plan FILE); `tt plan --example` prints one"))
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(Invalid(f"cannot read the plan {file}: {exc}"))
    try:
        specs = parse_plan(text)
    except Invalid as exc:
        fail(Invalid(f"{file}: {exc.message}"))
    who = identity()
    result = run(ctx, lambda town: town.plans.create(specs, by=who, dry_run=dry_run))
    if json_out:
        print_json({"dry_run": result.dry_run, "tasks": result.tasks,
                    "levels": [[p.key for p in level] for level in result.levels]})
        return
    _show_plan(result, file)


def _show_plan(result: "PlanResult", file: Path) -> None:
    from tinytown.cli.render import say

    levels = result.levels
    count = f"{len(result.tasks)} task{'s' if len(result.tasks) != 1 else ''}"
    if result.dry_run:
        say(f"plan {file}: {count} in {len(levels)} level{'s' if len(levels) != 1 else ''} "
            "(dry run: nothing was created)")
    else:
        say(f"created {count} from {file}")
    for number, level in enumerate(levels):
        say(f"level {number}:")
        for planned in level:
            say("  " + _plan_line(planned, dry_run=result.dry_run))


def _plan_line(planned: "PlannedTask", *, dry_run: bool) -> str:
    from tinytown.cli.render import one_line

    task = planned.task
    where = f"-> {task.assignee}" if task.assignee else "-> backlog"
    ref = "" if dry_run else f"{task.ref} "
    after = f"  (after {', '.join(planned.depends_on)})" if planned.depends_on else ""
    return f"{ref}{planned.key} {where} [{task.state.value}]: {one_line(task.description, 72)}{after}"


@backlog_app.command("assign")
def backlog_assign(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Argument(help="The agent to give backlog tasks to.")] = None,
    idle: Annotated[bool, typer.Option(
        "--idle", help="Give one task to each idle agent (none assigned or running) instead.")] = False,
    count: Annotated[int, typer.Option("--count", "-c", help="How many tasks AGENT gets (1-500).")] = 1,
    json_out: JsonOption = False,
) -> None:
    """Hand backlog tasks out, highest priority first: COUNT to AGENT, or one to each idle agent."""
    from tinytown.errors import Invalid

    if (agent is None) == (not idle):
        fail(Invalid("name an AGENT or pass --idle (not both)"))
    if idle and count != 1:
        fail(Invalid("--count goes with an AGENT; --idle gives one task to each idle agent"))
    who = identity()
    given: list[Task] = run(ctx, lambda town: town.plans.hand_out(agent, count=count, idle=idle, by=who))
    if json_out:
        print_json({"assigned": given})
        return
    from tinytown.cli.render import one_line, say

    if not given:
        say("nothing handed out: no agent is idle, or the backlog is empty" if idle
            else "nothing handed out: the backlog is empty")
        return
    for task in given:
        say(f"task {task.ref} -> {task.assignee} [{task.priority.value}]: {one_line(task.description, 60)}")
