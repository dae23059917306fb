"""``tt review``, ``tt merge``, ``tt discard``: a worktree agent's task is a branch to read,
merge into the checkout, or throw away (:mod:`tinytown.worktrees`)."""

from __future__ import annotations

from typing import Annotated

import typer

from tinytown.cli.app import JsonOption, app, identity, print_json, run
from tinytown.cli.commands import TASK_REF_HELP, FromOption

TaskRef = Annotated[str, typer.Argument(help=TASK_REF_HELP)]


@app.command()
def review(ctx: typer.Context, ref: TaskRef, json_out: JsonOption = False) -> None:
    """A task's change: its branch, the diff stat, then the diff (base...branch)."""
    change = run(ctx, lambda town: town.worktrees.review(ref))
    if json_out:
        print_json({"task": change.task, "stat": change.stat, "diff": change.diff})
        return
    task = change.task
    typer.echo(f"task {task.ref} on {task.branch} (from {(task.base or '')[:10]} to "
               f"{(task.head or '')[:10]}): {task.description}")
    typer.echo(change.stat.rstrip() or "no changes")
    if change.diff:
        typer.echo("")
        typer.echo(change.diff, nl=False)


@app.command()
def merge(
    ctx: typer.Context,
    ref: TaskRef,
    squash: Annotated[bool, typer.Option("--squash", help="One commit instead of a merge commit.")] = False,
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Merge a task's branch into the current branch of the town's checkout. A conflict
    aborts the merge (the checkout stays as it was), names the files and exits 1."""
    who = identity(sender)
    task = run(ctx, lambda town: town.worktrees.merge(ref, squash=squash, by=who))
    if json_out:
        print_json(task)
        return
    typer.echo(f"merged task {task.ref} ({task.branch}) into {task.merged_into} at "
               f"{(task.merge_commit or '')[:10]}")


@app.command()
def discard(ctx: typer.Context, ref: TaskRef, json_out: JsonOption = False) -> None:
    """Delete a task's branch: its change is thrown away."""
    task = run(ctx, lambda town: town.worktrees.discard(ref))
    if json_out:
        print_json(task)
        return
    typer.echo(f"discarded task {task.ref}: branch {task.branch} deleted")
