"""The ``tt`` commands for spawned agents and their processes.

``spawn`` · ``kill`` · ``restart`` · ``pause`` · ``resume`` · ``wait`` · ``prune`` ·
``recover`` · ``agent run`` (the runner's entry point, started by ``spawn``) · ``demo`` ·
``prime``.  Each parses, calls one :class:`~tinytown.town.Town` method and renders; heavy
imports happen inside the commands (``tt`` start-up time matters to hooks and scripts).

``kill``, ``restart`` and ``stop`` (``stop_cmd``) order the runner through Redis
(:mod:`tinytown.orders`), wherever it runs, and wait visibly: a progress line on stderr while a
round runs; Ctrl-C stops the wait (the order stands); ``--timeout`` cuts the round off after
that long.  Where the spec is silent:
``wait`` exits 0 when the agent is ``stopped``, 1 when it ended in ``error`` or is still
running at the timeout; lifecycle commands act as ``--from`` (default ``$TINYTOWN_AGENT``,
else the conductor), so an agent running ``tt kill`` is held to the same rules as its MCP
``kill_agent`` call.
"""

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tinytown.cli.app import JsonOption, app, fail, identity, print_json, run, state

if TYPE_CHECKING:
    from tinytown.models import Agent
    from tinytown.orders import StopOutcome

agent_app = typer.Typer(help="The runner of a spawned agent (started by `tt spawn`).", no_args_is_help=True)
app.add_typer(agent_app, name="agent", hidden=True)

FromOption = Annotated[
    str | None,
    typer.Option("--from", help="Act as this agent (default: $TINYTOWN_AGENT, else conductor)."),
]
AgentArg = Annotated[str, typer.Argument(help="The agent's name.")]


def _show_agent(agent: "Agent", json_out: bool, verb: str) -> None:
    if json_out:
        print_json(agent)
        return
    from tinytown.cli.render import say

    pid = f", runner pid {agent.pid}" if agent.pid else ""
    say(f"{verb} {agent.name}: {agent.state.value} (cli {agent.cli or '-'}{pid})")


@app.command()
def spawn(
    ctx: typer.Context,
    name: AgentArg,
    cli: Annotated[
        str | None, typer.Option("--cli", help="CLI preset: claude, codex, aider, gemini, scripted, "
                                               "or an [agent_clis.NAME] of tinytown.toml.")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="A short role, e.g. reviewer.")] = None,
    nickname: Annotated[str | None, typer.Option("--nickname", help="A display name.")] = None,
    max_rounds: Annotated[
        int | None, typer.Option("--max-rounds", min=1, help="Stop the runner after this many rounds.")
    ] = None,
    worktree: Annotated[bool | None, typer.Option(
        "--worktree/--no-worktree",
        help="Work in its own git worktree, a branch per task (default: worktrees in tinytown.toml).",
    )] = None,
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register an agent and start its runner (a detached process running the preset per round)."""
    agent = run(ctx, lambda town: town.spawn_agent(
        name, cli=cli, role=role, nickname=nickname, max_rounds=max_rounds, worktree=worktree,
        by=identity(sender)))
    _show_agent(agent, json_out, "spawned")
    if agent.state.value == "error":
        root = state(ctx).town
        fail(f"the runner of {agent.name} exited at once; see .tt/logs/{agent.name}.runner.log"
             f"{f' in {root}' if root else ''}")


def show_wait(line: str) -> None:
    """A lifecycle wait, visible: one progress line on stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def show_outcomes(outcomes: "list[StopOutcome]", json_out: bool) -> None:
    if json_out:
        print_json([o.outcome_json() for o in outcomes])
        return
    from tinytown.cli.render import say

    for outcome in outcomes:
        say(outcome.sentence())


def stop_waiting_on_ctrl_c(what: str) -> None:
    """Ctrl-C during a lifecycle wait ends the wait at once, whatever the wait is doing (an
    order stands in Redis, so nothing needs cleaning up): one line, exit 130."""
    import os
    import signal

    def stop_waiting(_signum: int, _frame: object) -> None:
        sys.stderr.write(f"tt: stopped waiting; {what}\n")
        sys.stderr.flush()
        os._exit(130)

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop_waiting)


def interrupted_wait(what: str) -> "typer.Exit":
    sys.stderr.write(f"tt: stopped waiting; {what}\n")
    return typer.Exit(130)


NowOption = Annotated[
    bool,
    typer.Option("--now", help="Do not wait for the round: cut it off; its tasks go back to the backlog."),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", min=0, help="Wait this long for the round, then cut it off (default: "
                                          "as long as the round takes)."),
]


@app.command()
def kill(
    ctx: typer.Context,
    name: AgentArg,
    now: NowOption = False,
    timeout: TimeoutOption = None,
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop an agent's runner after its current round (--now: cut the round off), wherever it
    runs; waits and says what happened. The agent is left stopped."""
    stop_waiting_on_ctrl_c(f"{name} keeps the order and stops after its round")
    try:
        outcome = run(ctx, lambda town: town.stop_agent(
            name, by=identity(sender), now=now, timeout_s=timeout, on_wait=show_wait))
    except KeyboardInterrupt:
        raise interrupted_wait(f"{name} keeps the order and stops after its round") from None
    if json_out:
        print_json(outcome.outcome_json())
    else:
        from tinytown.cli.render import say

        say(outcome.sentence())
    if outcome.outcome == "pending":
        raise typer.Exit(1)


@app.command()
def restart(
    ctx: typer.Context, name: AgentArg, timeout: TimeoutOption = None, sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Restart an agent's runner after its round (on the machine it runs on; a dead one here)."""
    stop_waiting_on_ctrl_c(f"{name} keeps the order and restarts after its round")
    try:
        agent = run(ctx, lambda town: town.restart_agent(
            name, by=identity(sender), timeout_s=timeout, on_wait=show_wait))
    except KeyboardInterrupt:
        raise interrupted_wait(f"{name} keeps the order and restarts after its round") from None
    _show_agent(agent, json_out, "restarted")


@app.command()
def pause(
    ctx: typer.Context, name: AgentArg, sender: FromOption = None, json_out: JsonOption = False
) -> None:
    """Start no new rounds until resumed; messages wait in the inbox."""
    agent = run(ctx, lambda town: town.pause_agent(name, by=identity(sender)))
    _show_agent(agent, json_out, "paused")


@app.command()
def resume(
    ctx: typer.Context, name: AgentArg, sender: FromOption = None, json_out: JsonOption = False
) -> None:
    """Let a paused agent take messages again."""
    agent = run(ctx, lambda town: town.resume_agent(name, by=identity(sender)))
    _show_agent(agent, json_out, "resumed")


@app.command()
def wait(
    ctx: typer.Context,
    name: AgentArg,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Give up after this many seconds.")
    ] = 60.0,
    json_out: JsonOption = False,
) -> None:
    """Wait until an agent is stopped (exit 0); exit 1 if it ends in error or the timeout passes."""
    agent = run(ctx, lambda town: town.wait_agent(name, timeout))
    _show_agent(agent, json_out, "agent")
    if agent.state.value == "error":
        fail(f"agent {agent.name} ended in error; see .tt/logs/{agent.name}.runner.log")
    if agent.state.value != "stopped":
        fail(f"agent {agent.name} is still {agent.state.value} after {timeout:g} s")


@app.command()
def prune(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Delete stopped (and errored) agents and everything they own."""
    names = run(ctx, lambda town: town.prune())
    if json_out:
        print_json({"pruned": names})
        return
    from tinytown.cli.render import say

    say(f"pruned {', '.join(names)}" if names else "nothing to prune")


@app.command()
def recover(
    ctx: typer.Context,
    to: Annotated[
        str | None, typer.Option("--to", help="Give the dead agents' tasks to this agent, not the backlog.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Repair after crashes: dead agents → stopped, their messages back, their tasks reclaimed;
    live agents get back the tasks a lost session of theirs held."""
    report = run(ctx, lambda town: town.recover(to))
    if json_out:
        print_json(report)
        return
    from tinytown.cli.render import plural, say

    lines = []
    if report.stopped:
        lines.append(f"marked stopped: {', '.join(report.stopped)}")
    for agent, n in report.requeued.items():
        lines.append(f"{agent}: {plural(n, 'unacknowledged message')} back in its inbox")
    where = to or "the backlog"
    for moved in report.reclaimed:
        lines.append(f"task {moved['task']} of {moved['from']} → {where}")
    for given in report.given_back:
        lines.append(f"task {given['task']} held by a lost session → back to {given['agent']}")
    for line in lines or ["nothing to recover"]:
        say(line)


@app.command()
def prime(
    ctx: typer.Context,
    agent: Annotated[
        str | None, typer.Argument(help="Who (default: $TINYTOWN_AGENT, else conductor).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Onboarding for an agent session: who it is, its task, its mail, how to work (for hooks)."""
    primer = run(ctx, lambda town: town.prime(identity(agent)))
    if json_out:
        print_json(primer)
        return
    from pathlib import Path

    from tinytown.prompting import render_prime

    root = Path(primer.root) if primer.root else None
    sys.stdout.write(render_prime(primer.agent, primer.town, root, primer.current_task, primer.inbox))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo town (print its directory).")] = False,
    tasks: Annotated[int, typer.Option("--tasks", min=1, max=50, help="How many tasks to assign.")] = 6,
    worktree: Annotated[bool, typer.Option(
        "--worktree", help="A git town: each agent changes files in its own worktree, then both are merged."
    )] = False,
    json_out: JsonOption = False,
) -> None:
    """A throwaway town: managed Redis, two scripted agents talking MCP over stdio, tasks done."""
    from tinytown.demo import run_demo
    from tinytown.errors import TinytownError

    try:
        code = run_demo(keep=keep, n_tasks=tasks, json_out=json_out, worktree=worktree)
    except TinytownError as error:
        fail(error)
    except KeyboardInterrupt:
        sys.stderr.write("tt: demo interrupted; cleaned up\n")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


@agent_app.command("run")
def agent_run(
    ctx: typer.Context,
    name: AgentArg,
    max_rounds: Annotated[
        int | None, typer.Option("--max-rounds", min=1, help="Stop after this many rounds.")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option("--idle-timeout", min=0.1, help="Stop after this many idle seconds.")
    ] = None,
    after_pid: Annotated[
        int | None, typer.Option("--after-pid", hidden=True, help="Start once this runner exited.")
    ] = None,
) -> None:
    """Run an agent's loop in this process (what `tt spawn` starts, detached)."""
    import anyio

    from tinytown.errors import TinytownError
    from tinytown.private import use_private_umask
    from tinytown.runner import configure_runner_logging, run_agent

    use_private_umask()  # the runner writes .tt/ only; its CLI gets the user's umask back
    configure_runner_logging()
    try:
        final: Any = anyio.run(
            lambda: run_agent(state(ctx).town, name, max_rounds=max_rounds, idle_timeout_s=idle_timeout,
                              after_pid=after_pid)
        )
    except TinytownError as error:
        fail(error)
    raise typer.Exit(0 if final.value in ("stopped", "starting") else 1)  # starting: restarted
