"""The ``tt`` commands that need no spawned process: the town, messages, tasks, history.

Each command parses its arguments, calls one :class:`~tinytown.town.Town` method through
:func:`~tinytown.cli.app.run` (which maps domain errors to ``tt: code: sentence`` and exit 1)
and renders the result: ``--json`` prints the record read, created or changed with stable
keys; otherwise :mod:`tinytown.cli.render` prints a rich table on a terminal or plain text.

Start-up time matters (``tt send`` and ``tt inbox --count`` run from scripts and prompt
hooks): this module imports only Typer and the CLI frame at load time; the Town, config,
rendering and rich are imported inside the commands that use them.

Choices this page makes where the spec is silent:

* ``init`` creates the town in ``--town``, else ``$TINYTOWN_TOWN``, else the current directory.
* ``receive`` waits 30 s by default (as the MCP tool does); ``--timeout 0`` only takes what
  is there.  Messages are printed, then acknowledged, so a consumer that dies while printing
  gets them again.
* ``--json`` with ``--watch`` / ``--follow`` prints one compact JSON document per line.
"""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tinytown.cli.app import JsonOption, app, fail, identity, print_example, print_json, run, run_plain, state
from tinytown.models import CONDUCTOR

if TYPE_CHECKING:
    from tinytown.cli.render import Part
    from tinytown.config import TownConfig, TownPaths
    from tinytown.conversation import HistoryEntry
    from tinytown.models import Message
    from tinytown.orders import StopOutcome
    from tinytown.redis_server import ManagedRedis
    from tinytown.roster import TownStatus
    from tinytown.town import Town

WATCH_REFRESH_S = 3.0
WATCH_INBOX = 5  # conductor messages shown by status --watch
FOLLOW_BLOCK_S = 5.0

task_app = typer.Typer(help="Show or finish one task: show | done | fail | cancel.", no_args_is_help=True)
backlog_app = typer.Typer(help="Tasks no agent holds yet: add | list | claim | assign.",
                          no_args_is_help=True)
app.add_typer(task_app, name="task")
app.add_typer(backlog_app, name="backlog")

PriorityOption = Annotated[str, typer.Option("--priority", "-p", help="urgent | high | normal | low.")]
TagOption = Annotated[list[str] | None, typer.Option("--tag", "-t", help="A tag for the task (repeatable).")]
TASK_REF_HELP = "The task: #N, N (its number), its id, or a unique id prefix (4+ characters)."
FromOption = Annotated[
    str | None,
    typer.Option("--from", help="Act as this agent (default: $TINYTOWN_AGENT, else conductor)."),
]


def _json_line(value: Any) -> None:
    """One compact JSON document per line (streams: ``--watch``, ``--follow``)."""
    from tinytown.cli.app import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(value), default=str) + "\n")
    sys.stdout.flush()


def _local_town(ctx: typer.Context) -> "tuple[TownPaths, TownConfig]":
    """The town's paths and config, without connecting to Redis."""
    from tinytown.config import TownPaths, find_town_root, load_config

    def load() -> "tuple[TownPaths, TownConfig]":
        paths = TownPaths(find_town_root(state(ctx).town))
        return paths, load_config(paths)

    return run_plain(load)


def _name(agent: str) -> str:
    """An agent name as the town stores it (lower case, ``supervisor`` → ``conductor``)."""
    from tinytown.models import normalise_agent_name

    return normalise_agent_name(agent)


async def _current_numbers(town: "Town", agents: "list[Any]") -> dict[str, int]:
    """The numbers of the agents' current tasks, to show them as ``#N``."""
    return await town.task_numbers([a.current_task for a in agents if a.current_task])


# --------------------------------------------------------------------- the town


@app.command()
def init(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Option("--name", help="Town name (default: the directory name).")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Use this Redis instead of a managed one.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing tinytown.toml.")] = False,
    store_password: Annotated[
        bool,
        typer.Option("--store-password", help="Write the Redis URL's password into tinytown.toml too."),
    ] = False,
    example: Annotated[bool, typer.Option(
        "--example", help="Print a tinytown.toml showing every key with its default; create nothing."
    )] = False,
    json_out: JsonOption = False,
) -> None:
    """Make a town here: tinytown.toml, the .tt/ runtime folder, .tt/ in .gitignore."""
    import os

    if example:
        from tinytown.config import example_config

        print_example("tinytown.toml", example_config(), json_out)
        return

    from tinytown.config import TownPaths, init_town
    from tinytown.masking import mask_url

    given = state(ctx).town or os.environ.get("TINYTOWN_TOWN")
    root = Path(given).expanduser() if given else Path.cwd()
    config = run_plain(lambda: init_town(
        root, name=name, redis_url=redis_url, force=force, store_password=store_password
    ))
    paths = TownPaths(root.resolve())
    redis = mask_url(config.redis.url) or "managed"
    withheld = bool(redis_url) and not store_password and config.redis.url != redis_url
    if withheld:
        typer.echo(
            "tt: the Redis password is not written to tinytown.toml (a file meant to be committed); "
            "put the full URL, password included, in REDIS_URL for tt and the agents "
            "(or run `tt init --force --store-password --redis-url URL`)", err=True,
        )
    if json_out:
        made: dict[str, object] = {
            "town": config.name, "root": str(paths.root), "config": str(paths.config), "redis": redis,
        }
        if redis_url:
            made["password_stored"] = not withheld
        print_json(made)
        return
    from tinytown.cli.render import say

    say(f"created town {config.name} in {paths.root}")
    if redis == "managed":
        say("redis: managed (a private redis-server in .tt/, started on first use or by `tt up`)")
    else:
        say(f"redis: {redis}")


@app.command()
def up(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Start the town's managed Redis (a no-op for an external Redis URL)."""
    managed = _managed_server(ctx, json_out)
    if managed is None:
        return
    config, server = managed
    started = run_plain(server.ensure_running)
    binary = run_plain(server.binary)
    if json_out:
        print_json(
            {
                "town": config.name,
                "managed": True,
                "redis": server.url,
                "pid": server.pid(),
                "started": started,
                "server": binary and {
                    "name": binary.name, "version": binary.version_text, "path": binary.path
                },
            }
        )
        return
    from tinytown.cli.render import say

    verb = "started" if started else "already running:"
    what = binary.describe() if binary else "Redis"
    say(f"{verb} managed {what} of town {config.name} at {server.url} (pid {server.pid()})")


@app.command()
def down(
    ctx: typer.Context,
    all_runners: Annotated[
        bool, typer.Option("--all", help="Stop the town's runners first (after their rounds), then Redis.")
    ] = False,
    now: Annotated[bool, typer.Option("--now", help="With --all: cut the runners' rounds off.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Stop the town's managed Redis; its data stays in .tt/ (AOF) for the next start.
    Refused while runners live, unless --all."""
    managed = _managed_server(ctx, json_out)
    if managed is None:
        return
    config, server = managed
    from tinytown.cli.stop_cmd import runners_stopped_or_refused

    running = run_plain(server.is_running)
    outcomes = runners_stopped_or_refused(ctx, "down", all_runners, now) if running else []
    stopped = run_plain(server.stop)
    if json_out:
        print_json({"town": config.name, "managed": True, "redis": server.url, "stopped": stopped,
                    "runners": [o.outcome_json() for o in outcomes]})
        return
    from tinytown.cli.render import say

    for outcome in outcomes:
        say(outcome.sentence())
    if stopped:
        say(f"stopped managed Redis of town {config.name}")
    else:
        say(f"managed Redis of town {config.name} was not running")


def _managed_server(ctx: typer.Context, json_out: bool) -> "tuple[TownConfig, ManagedRedis] | None":
    """The town's managed server, or None after saying the town uses an external Redis."""
    from tinytown.connect import managed_redis
    from tinytown.masking import mask_url

    paths, config = _local_town(ctx)
    if config.redis.url:
        _external(config.name, mask_url(config.redis.url) or "", json_out)
        return None
    return config, managed_redis(config, paths)


def _external(town: str, url: str, json_out: bool) -> None:
    if json_out:
        print_json({"town": town, "managed": False, "redis": url})
    else:
        from tinytown.cli.render import say

        say(f"town {town} uses the external Redis {url}; no server is managed")


@app.command()
def status(
    ctx: typer.Context,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep showing it, refreshed when the town changes.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Agents per page (1-500).")] = 100,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")] = None,
    json_out: JsonOption = False,
) -> None:
    """The town: Redis, agents (state, staleness, inbox, task), task counts by state."""
    if not watch:
        result, numbers = run(ctx, lambda town: _status_view(town, limit, cursor))
        if json_out:
            print_json(result)
        else:
            from tinytown.cli.render import show

            show(_status_parts(result, numbers))
        return
    try:
        run(ctx, lambda town: _watch(town, json_out))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _watch(town: "Town", json_out: bool) -> None:
    """Show the status, and the conductor's inbox, again whenever an event lands on the
    town stream.

    Waits on the stream (XREAD BLOCK) in slices of :data:`WATCH_REFRESH_S`, so a terminal
    view also refreshes ages and staleness while the town is quiet.  A pipe gets a new
    status only when something happened.  The inbox is peeked, never consumed: the human
    still reads it with ``tt receive``.
    """
    from tinytown.channel import stop_if_cancelled
    from tinytown.cli.app import is_terminal, to_jsonable
    from tinytown.cli.render import console, plain, renderable

    async def view() -> "list[Part]":
        current, numbers = await _status_view(town)
        inbox = await town.inbox(CONDUCTOR, limit=WATCH_INBOX)
        numbers |= await town.task_numbers([m.task_id for m in inbox if m.task_id])
        if json_out:
            _json_line({**to_jsonable(current), "conductor_inbox": to_jsonable(inbox)})
            return []
        return _status_parts(current, numbers) + _inbox_parts(current, inbox, numbers)

    last = await town.last_event_id()
    if json_out or not is_terminal():
        changed = True
        while True:
            stop_if_cancelled()
            if changed:
                parts = await view()
                if parts:
                    sys.stdout.write(plain(parts) + "\n")
                    sys.stdout.flush()
            events = await town.wait_events(last, WATCH_REFRESH_S)
            changed = bool(events)
            if events:
                last = events[-1].id
    from rich.live import Live

    with Live(renderable(await view()), console=console(), auto_refresh=False) as live:
        while True:
            stop_if_cancelled()
            events = await town.wait_events(last, WATCH_REFRESH_S)
            if events:
                last = events[-1].id
            live.update(renderable(await view()), refresh=True)


def _inbox_parts(current: "TownStatus", inbox: "list[Message]", numbers: dict[str, int]) -> "list[Part]":
    """The conductor's pending messages, highest priority first, bodies folded."""
    from tinytown.cli.render import message_lines, plural, task_ref, terminal_width

    pending = next((v.inbox.pending for v in current.agents if v.agent.name == CONDUCTOR), len(inbox))
    if not pending:
        return ["conductor's inbox: empty"]
    more = f" (the first {len(inbox)} shown; tt receive takes them)" if pending > len(inbox) else ""
    lines: list[Part] = [f"conductor's inbox: {plural(pending, 'message')}{more}"]
    for m in inbox:
        ref = task_ref(m.task_id, numbers) if m.task_id else ""
        lines += ["  " + line for line in message_lines(m, terminal_width() - 2, ref)]
    return lines


async def _status_view(
    town: "Town", limit: int = 100, cursor: str | None = None
) -> "tuple[TownStatus, dict[str, int]]":
    current = await town.status(limit=limit, cursor=cursor)
    return current, await _current_numbers(town, [v.agent for v in current.agents])


def _status_parts(current: "TownStatus", numbers: dict[str, int]) -> "list[Part]":
    from tinytown.cli.render import STATE_STYLES, Cell, Table, ago, styled, task_ref

    where = f"  ({current.root})" if current.root else ""
    server = f"  ({current.server})" if current.server else ""
    parts: list[Part] = [f"town   {current.town}{where}", f"redis  {current.redis}{server}"]
    table = Table(["agent", "state", "host", "seen", "inbox", "urgent", "in flight", "task"])
    for view in current.agents:
        agent = view.agent
        state_cell: Cell = styled(agent.state.value, STATE_STYLES)
        if view.runner_gone:
            state_cell = (f"{agent.state.value} (runner gone: tt recover)", "bold red")
        elif view.stale:
            state_cell = (f"{agent.state.value} (stale)", "bold red")
        urgent: Cell = (str(view.inbox.urgent), "bold red") if view.inbox.urgent else "0"
        table.rows.append([
            agent.name, state_cell, agent.host or "-", ago(agent.last_seen, current.now),
            str(view.inbox.pending), urgent,
            str(view.inbox.in_flight), task_ref(agent.current_task, numbers),
        ])  # fmt: skip
    parts.append(table)
    if current.next_cursor:
        parts.append(f"{len(current.agents)} of {current.agent_count} agents; more: tt status "
                     f"--cursor {current.next_cursor}")
    parts.append("tasks  " + "  ".join(f"{name} {count}" for name, count in current.tasks.items()))
    return parts


@app.command("list")
def list_agents(
    ctx: typer.Context,
    agent_state: Annotated[str | None, typer.Option("--state", help="Only agents in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Page size (1-500).")] = 100,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")] = None,
    json_out: JsonOption = False,
) -> None:
    """The agents of the town (the conductor first), a page at a time."""

    async def go(town: "Town") -> tuple[Any, float, dict[str, int], int]:
        page = await town.agents_page(agent_state, limit=limit, cursor=cursor)
        numbers = await _current_numbers(town, page.agents)
        return page, town.config.stale_after_s, numbers, await town.now_ms()

    page, stale_after_s, numbers, at_ms = run(ctx, go)
    if json_out:
        print_json({"agents": page.agents, "next_cursor": page.next_cursor})
        return
    from tinytown.cli.render import agents_table, show

    parts: list[Part] = [agents_table(page.agents, stale_after_s, at_ms, numbers)]
    if page.next_cursor:
        parts.append(f"more: tt list --cursor {page.next_cursor}")
    show(parts)


RESET_STOP_S = 30.0
"""How long ``reset`` waits for runners to stop before it deletes anyway (a runner on another
machine that answers later finds its agent gone and stops)."""


@app.command()
def reset(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Really delete everything.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Delete every agent, task, message and event of the town (keeps tinytown.toml); its
    runners are stopped first (their rounds cut off)."""
    from tinytown.errors import Invalid

    _paths, config = _local_town(ctx)
    if not force:
        fail(
            Invalid(
                f"reset deletes every agent, task, message and event of town {config.name}; "
                "pass --force to do it"
            )
        )
    from tinytown.cli.lifecycle import show_wait

    async def stop_then_reset(town: "Town") -> "tuple[list[StopOutcome], int]":
        outcomes = await town.stop_all(now=True, timeout_s=RESET_STOP_S, on_wait=show_wait)
        return outcomes, await town.reset()

    outcomes, deleted = run(ctx, stop_then_reset)
    if json_out:
        print_json({"town": config.name, "deleted_keys": deleted,
                    "runners": [o.outcome_json() for o in outcomes]})
        return
    from tinytown.cli.render import say

    for outcome in outcomes:
        say(outcome.sentence())
    say(f"reset town {config.name}: deleted {deleted} keys")


# --------------------------------------------------------------------- messages


@app.command()
def send(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="Agent name, or 'all' for every agent that is not stopped.")],
    message: Annotated[str, typer.Argument(help="The message body.")],
    kind: Annotated[
        str, typer.Option("--kind", "-k", help="info | query | task | ack | custom | ...")
    ] = "info",
    urgent: Annotated[bool, typer.Option("--urgent", "-u", help="Same as --priority urgent.")] = False,
    priority: Annotated[
        str | None, typer.Option("--priority", "-p", help="urgent | high | normal | low.")
    ] = None,
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Send a message to an agent's inbox (durable; received highest priority first)."""
    if urgent and priority not in (None, "urgent"):
        raise typer.BadParameter("give either --urgent or --priority, not both", param_hint="--urgent")
    chosen = "urgent" if urgent else priority or "normal"
    who = identity(sender)
    receipt = run(ctx, lambda town: town.send(who, to, message, kind=kind, priority=chosen))
    if json_out:
        print_json(receipt)
        return
    from tinytown.cli.render import plural, say

    copies = f" ({plural(len(receipt.copies), 'copy', 'copies')})" if receipt.message.to == "all" else ""
    say(f"sent {receipt.message.id} to {receipt.message.to}{copies} [{receipt.message.priority.value}]")


@app.command()
def inbox(
    ctx: typer.Context,
    agent: Annotated[
        str | None, typer.Argument(help="Whose inbox (default: $TINYTOWN_AGENT, else conductor).")
    ] = None,
    every: Annotated[bool, typer.Option("--all", "-a", help="Every agent's pending messages.")] = False,
    count: Annotated[bool, typer.Option("--count", "-c", help="Print only the pending count.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many messages per agent.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """Peek at pending messages without consuming them (highest priority first)."""
    if every:
        _inbox_all(ctx, limit, count, json_out)
        return
    who = _name(identity(agent))

    if count:
        counts = run(ctx, lambda town: town.inbox_counts(who))
        if json_out:
            print_json({"agent": who, **counts.model_dump()})
        else:
            sys.stdout.write(f"{counts.pending}\n")
        return

    async def go(town: "Town") -> "tuple[Any, list[Message], dict[str, int]]":
        messages = await town.inbox(who, limit)
        return await town.inbox_counts(who), messages, await _message_numbers(town, messages)

    counts, messages, numbers = run(ctx, go)
    if json_out:
        print_json({"agent": who, "inbox": counts, "messages": messages})
        return
    from tinytown.cli.render import message_parts, show

    show([_inbox_header(who, counts), *message_parts(messages, numbers)])


async def _message_numbers(town: "Town", messages: "list[Message]") -> dict[str, int]:
    """The numbers (``#N``) of the tasks these messages are about."""
    return await town.task_numbers([m.task_id for m in messages if m.task_id])


def _inbox_all(ctx: typer.Context, limit: int, count: bool, json_out: bool) -> None:
    async def go(town: "Town") -> list[dict[str, Any]]:
        views = (await town.status(limit=500)).agents
        rows: list[dict[str, Any]] = [
            {"agent": v.agent.name, "inbox": v.inbox,
             "messages": [] if count or not v.inbox.pending else await town.inbox(v.agent.name, limit)}
            for v in views
        ]  # fmt: skip
        for row in rows:
            row["numbers"] = await _message_numbers(town, row["messages"])
        return rows

    rows = run(ctx, go)
    if json_out:
        print_json(
            {"agents": [{k: v for k, v in row.items() if k != "numbers" and not (count and k == "messages")}
                        for row in rows]}
        )
        return
    from tinytown.cli.render import Table, message_parts, show

    if count:
        table = Table(["agent", "pending", "urgent", "in flight"])
        for row in rows:
            c = row["inbox"]
            table.rows.append([row["agent"], str(c.pending), str(c.urgent), str(c.in_flight)])
        show([table])
        return
    parts: list[Part] = []
    for row in rows:
        parts.append(_inbox_header(row["agent"], row["inbox"]))
        parts += message_parts(row["messages"], row["numbers"])
    show(parts)


def _inbox_header(name: str, counts: Any) -> str:
    if not counts.pending:
        return f"{name}: no pending messages ({counts.in_flight} in flight)"
    return f"{name}: {counts.pending} pending ({counts.urgent} urgent, {counts.in_flight} in flight)"


@app.command()
def receive(
    ctx: typer.Context,
    agent: Annotated[
        str | None, typer.Argument(help="Whose messages (default: $TINYTOWN_AGENT, else conductor).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a message (0-300).")
    ] = 30.0,
    max_messages: Annotated[int, typer.Option("--max", help="At most this many messages (1-100).")] = 10,
    json_out: JsonOption = False,
) -> None:
    """Consume messages (for scripts): wait for them, print them, acknowledge them.

    On a timeout it prints nothing (``--json``: an empty list with ``timed_out``), exit 0.
    """
    who = _name(identity(agent))

    async def go(town: "Town") -> None:
        # its own batch only: it acknowledges what it printed, never a live session's batch
        got = await town.receive(who, timeout_s=timeout, max_messages=max_messages, ack_previous=False)
        if json_out:
            print_json({"agent": who, "messages": got.messages, "timed_out": got.timed_out})
        elif got.messages:
            from tinytown.cli.render import message_parts, show

            show(message_parts(got.messages, await _message_numbers(town, got.messages)))
        # Printed first, acknowledged second: a consumer that dies while printing gets them again.
        await town.ack(who, [m.id for m in got.messages])

    run(ctx, go)


# --------------------------------------------------------------------- tasks


@app.command()
def assign(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="The agent that should do it.")],
    description: Annotated[str, typer.Argument(help="What should be done.")],
    tags: TagOption = None,
    priority: PriorityOption = "normal",
    depends_on: Annotated[list[str] | None, typer.Option(
        "--depends-on", "-d", help="A task this one waits for (repeatable): #N, N, id or id prefix.",
    )] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a task for an agent; it gets a `task` message carrying the task id (with
    --depends-on: once every task it depends on completed; until then it is waiting)."""
    who = identity()
    task = run(ctx, lambda town: town.assign(
        description, agent=agent, by=who, tags=tags or [], priority=priority, depends_on=depends_on,
    ))
    if json_out:
        print_json(task)
        return
    from tinytown.cli.render import say

    if task.waiting_on:
        waits = ", ".join(task.dependency_ref(t) for t in task.waiting_on)
        say(f"task {task.ref} for {_name(agent)} [{task.priority.value}] is waiting on {waits} "
            f"(id {task.id})")
        return
    say(f"assigned task {task.ref} to {_name(agent)} [{task.priority.value}] (id {task.id})")


@app.command()
def tasks(
    ctx: typer.Context,
    task_state: Annotated[str | None, typer.Option("--state", "-s", help="Only tasks in this state.")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="Only tasks given to this agent.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Page size (1-500).")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Tasks, newest first, a page at a time."""

    page = run(ctx, lambda town: town.list_tasks(state=task_state, agent=agent, limit=limit, cursor=cursor))
    if json_out:
        print_json(page)
        return
    _show_page(page, "tasks")


def _show_page(page: Any, command: str) -> None:
    from tinytown.cli.render import show, tasks_table

    parts: list[Part] = [tasks_table(page.tasks)] if page.tasks else ["no tasks"]
    if page.next_cursor:
        parts.append(f"more: tt {command} --cursor {page.next_cursor}")
    show(parts)


@task_app.command("show")
def task_show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help=TASK_REF_HELP)],
    json_out: JsonOption = False,
) -> None:
    """One task: its fields, its thread (every message about it) and how it ended."""

    thread = run(ctx, lambda town: town.conversation.thread(task_id))
    if json_out:
        from tinytown.cli.app import to_jsonable

        print_json({**to_jsonable(thread.task), "thread": thread.messages})
        return
    from tinytown.cli.render import show, terminal_width, thread_parts

    show(thread_parts(thread, terminal_width()))


@task_app.command("done")
def task_done(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help=TASK_REF_HELP)],
    result: Annotated[str, typer.Argument(help="What was done (the creator is told).")],
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Mark a task completed (as its assignee, or as the conductor)."""
    who = identity(sender)
    task = run(ctx, lambda town: town.complete_task(task_id, result, by=who))
    _finished(task, json_out)


@task_app.command("fail")
def task_fail(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help=TASK_REF_HELP)],
    error: Annotated[str, typer.Argument(help="Why it failed (the creator is told).")],
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Mark a task failed (as its assignee, or as the conductor)."""
    who = identity(sender)
    task = run(ctx, lambda town: town.fail_task(task_id, error, by=who))
    _finished(task, json_out)


@task_app.command("cancel")
def task_cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help=TASK_REF_HELP)],
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why (the agents are told).")] = None,
    sender: FromOption = None,
    json_out: JsonOption = False,
) -> None:
    """Cancel a task that is not finished (as the conductor, its creator or its assignee)."""
    who = identity(sender)
    task = run(ctx, lambda town: town.cancel_task(task_id, reason, by=who))
    _finished(task, json_out)


def _finished(task: Any, json_out: bool) -> None:
    if json_out:
        print_json(task)
        return
    from tinytown.cli.render import say

    say(f"task {task.ref} {task.state.value}")


@backlog_app.command("add")
def backlog_add(
    ctx: typer.Context,
    description: Annotated[str | None, typer.Argument(help="What should be done.")] = None,
    tags: TagOption = None,
    priority: PriorityOption = "normal",
    file: Annotated[str | None, typer.Option("--file", "-f", help=(
        "Add every task of FILE ('-': stdin): one description a line, or JSON lines, "
        "each an object with description and optional tags (a list) and priority."))] = None,
    json_out: JsonOption = False,
) -> None:
    """Put a task in the backlog for any agent to claim (or many, with --file)."""
    who = identity()
    if file is not None or description is None:
        from tinytown.cli.bulk_cmd import add_from_file

        add_from_file(ctx, file, description, who, json_out)
        return
    task = run(ctx, lambda town: town.assign(description, by=who, tags=tags or [], priority=priority))
    if json_out:
        print_json(task)
        return
    from tinytown.cli.render import say

    say(f"added task {task.ref} to the backlog [{task.priority.value}] (id {task.id})")


@backlog_app.command("list")
def backlog_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Page size (1-500).")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Backlog tasks, oldest first (the order `claim` takes them)."""
    from tinytown.models import TaskState

    page = run(
        ctx,
        lambda town: town.list_tasks(state=TaskState.PENDING, limit=limit, cursor=cursor, oldest_first=True),
    )
    if json_out:
        print_json(page)
        return
    _show_page(page, "backlog list")


@backlog_app.command("claim")
def backlog_claim(
    ctx: typer.Context,
    task_id: Annotated[str | None, typer.Argument(
        help="A backlog task: #N, N, its id or a unique id prefix (default: the oldest).")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Claim for this agent (default: $TINYTOWN_AGENT).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Take a backlog task (the given one, or the oldest); it becomes running."""
    who = identity(agent)
    task = run(ctx, lambda town: town.claim(who, task_id))
    if json_out:
        print_json(task)
        return
    from tinytown.cli.render import one_line, say

    say(f"{_name(who)} claimed task {task.ref}: {one_line(task.description)}")


# --------------------------------------------------------------------- history


@app.command()
def history(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("-n", "--count", help="How many recent events.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="Only what this agent did, sent or received.")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Only events about this task (#N, N, id, prefix).")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", "-k", help="A message kind (query), event type (task.failed) or "
                     "family (agent)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """The conversation and what happened, oldest first: messages with their bodies, tasks
    by #N, agents by name (--json: the full events with their messages and tasks)."""
    if count < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="-n")

    async def go(town: "Town") -> "list[HistoryEntry]":
        conversation = town.conversation
        flt = await conversation.filter(agent=agent, task=task, kind=kind)
        entries = await conversation.history(count, flt) if count else []
        if not follow:
            return entries
        for entry in entries:
            _print_entry(entry, json_out)
        after = entries[-1].id if entries else await town.last_event_id()
        async for entry in conversation.follow(after, flt, block_s=FOLLOW_BLOCK_S):
            _print_entry(entry, json_out)
        return []

    try:
        entries = run(ctx, go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if json_out:
        print_json({"events": entries})
        return
    for entry in entries:
        _print_entry(entry, False)


def _print_entry(entry: "HistoryEntry", json_out: bool) -> None:
    if json_out:
        _json_line(entry)
        return
    from tinytown.cli.render import history_lines, terminal_width

    sys.stdout.write("".join(line + "\n" for line in history_lines(entry, terminal_width())))
    sys.stdout.flush()
