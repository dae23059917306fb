"""The 15 tools of SPEC 6.  Each is a thin adapter over one Town method.

The docstrings are the tool descriptions a model reads: what the tool does, when to use
it, which ids to pass.  Parameter annotations carry the JSON-schema descriptions and
bounds; the caller's identity is never an argument (it is fixed per session).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Annotated, Any, Literal

from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from tinytown.errors import NotFound
from tinytown.models import DEFAULT_AGENT_PAGE, MAX_AGENT_PAGE, MAX_RECEIVE_TIMEOUT_S
from tinytown.prompting import unwrap
from tinytown.tasks import MAX_PAGE, MAX_TAG_LEN, MAX_TAGS
from tinytown.town import MAX_BATCH
from tinytown_mcp.adapter import Session, ToolContext, answer

AgentStateName = Literal["starting", "idle", "working", "paused", "stopped", "error"]
TaskStateName = Literal["waiting", "pending", "assigned", "running", "completed", "failed", "cancelled"]
PriorityName = Literal["urgent", "high", "normal", "low"]
KindName = Literal["task", "query", "info", "ack", "task_done", "task_failed", "task_cancelled", "custom"]

TaskId = Annotated[str, Field(min_length=1, max_length=128, description=(
    "The task: #N or N (its number), its id, or a unique prefix of the id (4+ characters)."))]
AgentName = Annotated[str, Field(min_length=1, max_length=32)]


async def whoami(ctx: ToolContext) -> CallToolResult:
    """Who you are in this town: your agent record, the town, your current task (in full, if you
    have one) and your inbox counts. Call it first if you are unsure of your name or task.
    `in_round: true` means a runner started you for one round: the round's messages are in your
    prompt (and stay in flight); `receive` gets only new mail."""

    async def call(s: Session) -> dict[str, Any]:
        agent = await s.town.get_agent(s.agent)
        task = None
        if agent.current_task:
            try:
                task = await s.town.get_task(agent.current_task)
            except NotFound:
                task = None
        counts = await s.town.inbox_counts(s.agent)
        return {
            "agent": agent, "town": s.town.name, "root": str(s.town.root) if s.town.root else None,
            "session": s.session_id, "in_round": s.in_round, "current_task": task,
            "in_flight": counts.in_flight,
            "inbox": {"pending": counts.pending, "urgent": counts.urgent},
        }

    return await answer(ctx, "whoami", call)


async def town_status(
    ctx: ToolContext,
    limit: Annotated[int, Field(ge=1, le=MAX_AGENT_PAGE, description="Agents per page.")] = (
        DEFAULT_AGENT_PAGE),
    cursor: Annotated[str | None, Field(max_length=64, description=(
        "The `next_cursor` of the previous page, to see more agents."))] = None,
) -> CallToolResult:
    """The whole town at a glance: its Redis (password masked), the agents (a page, the
    conductor first) with state, staleness and inbox counts, how many agents there are, and
    how many tasks are in each state. When `next_cursor` is not null, pass it as `cursor`."""

    async def call(s: Session) -> dict[str, Any]:
        return (await s.town.status(limit=limit, cursor=cursor)).model_dump(mode="json")

    return await answer(ctx, "town_status", call)


async def list_agents(
    ctx: ToolContext,
    state: Annotated[AgentStateName | None, Field(description="Only agents in this state.")] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_AGENT_PAGE, description="Page size.")] = DEFAULT_AGENT_PAGE,
    cursor: Annotated[str | None, Field(max_length=64, description=(
        "The `next_cursor` of the previous page, to continue."))] = None,
) -> CallToolResult:
    """A page of the town's agents (the conductor first), optionally only those in one state.
    Use the names as `to` in send_message or `agent` in assign_task. When `next_cursor` is
    not null, pass it as `cursor` for the next page."""

    async def call(s: Session) -> dict[str, Any]:
        page = await s.town.agents_page(state, limit=limit, cursor=cursor)
        return {"agents": page.agents, "next_cursor": page.next_cursor}

    return await answer(ctx, "list_agents", call)


async def spawn_agent(
    ctx: ToolContext,
    name: Annotated[str, Field(min_length=1, max_length=32, description=(
        "The new agent's name: 1-32 characters a-z, 0-9, '_' or '-', starting with a letter."))],
    cli: Annotated[str | None, Field(max_length=64, description=(
        "The CLI preset to run it with (e.g. claude, codex); default: the town's default_cli."))] = None,
    role: Annotated[str | None, Field(max_length=200, description="A short role, e.g. 'reviewer'.")] = None,
    nickname: Annotated[str | None, Field(max_length=64, description="A display name.")] = None,
    worktree: Annotated[bool | None, Field(description=(
        "Work in its own git worktree, each task on its own branch tt/NAME/N for the conductor "
        "to review and merge (default: the town's `worktrees` setting)."))] = None,
) -> CallToolResult:
    """Register a new agent and start a runner process for it, which runs the CLI preset each time
    the agent gets work. Give it work afterwards with assign_task. Usually the conductor's job."""

    async def call(s: Session) -> dict[str, Any]:
        return {"agent": await s.town.spawn_agent(name, cli=cli, role=role, nickname=nickname,
                                                  worktree=worktree, by=s.agent)}

    return await answer(ctx, "spawn_agent", call)


async def kill_agent(
    ctx: ToolContext,
    name: Annotated[str, Field(min_length=1, max_length=32, description="The agent to stop.")],
) -> CallToolResult:
    """Stop an agent's runner, on whatever machine it runs. It finishes its current round first
    (up to 10 s; then the round is cut off and its tasks go back to the backlog); tasks still
    queued for it stay assigned to it."""

    async def call(s: Session) -> dict[str, Any]:
        return {"agent": await s.town.kill_agent(name, by=s.agent)}

    return await answer(ctx, "kill_agent", call)


async def assign_task(
    ctx: ToolContext,
    description: Annotated[str, Field(min_length=1, description=(
        "What should be done, self-contained: the assignee sees only this text (at most 16 KiB)."))],
    agent: Annotated[AgentName | None, Field(description=(
        "Who does it. Leave it out to put the task in the backlog, where any agent can claim it."))] = None,
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_LEN)]] | None, Field(
        max_length=MAX_TAGS, description="Labels for filtering.")] = None,
    priority: Annotated[PriorityName, Field(description="Urgent tasks are received first.")] = "normal",
    parent_id: Annotated[str | None, Field(max_length=128, description=(
        "The task this one is part of (#N, N, its id or a unique id prefix), if any."))] = None,
    depends_on: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]] | None, Field(
        max_length=100, description=(
            "Tasks that must complete first (#N, N, id or id prefix each). Until they have, this "
            "task is `waiting`; if one fails or is cancelled, this one is cancelled."))] = None,
) -> CallToolResult:
    """Create a task. With `agent` it is assigned at once and the agent receives a `task` message
    carrying the task id; without, it waits in the backlog. With `depends_on` it is `waiting`
    until those tasks completed, and only then assigned (or put in the backlog). You receive a
    `task_done` / `task_failed` message when it finishes. Returns the task: its `number` N is
    its short reference (`#N`), accepted wherever a task id is."""

    async def call(s: Session) -> dict[str, Any]:
        task = await s.town.assign(
            description, agent=agent, by=s.agent, tags=tags, priority=priority, parent_id=parent_id,
            depends_on=depends_on,
        )
        return {"task": task}

    return await answer(ctx, "assign_task", call)


async def claim_task(
    ctx: ToolContext,
    task_id: Annotated[str | None, Field(max_length=128, description=(
        "A backlog task to take (#N, N, its id or a unique id prefix); leave it out to take the "
        "oldest one."))] = None,
) -> CallToolResult:
    """Take a task from the backlog for yourself; it becomes `running` and yours to finish with
    task_done or task_failed. not_found means the backlog is empty."""

    async def call(s: Session) -> dict[str, Any]:
        return {"task": await s.town.claim(s.agent, task_id, session=s.session_id)}

    return await answer(ctx, "claim_task", call)


async def list_tasks(
    ctx: ToolContext,
    state: Annotated[TaskStateName | None, Field(description="Only tasks in this state.")] = None,
    agent: Annotated[AgentName | None, Field(description="Only tasks assigned to this agent.")] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    cursor: Annotated[str | None, Field(max_length=64, description=(
        "The `next_cursor` of the previous page, to continue."))] = None,
) -> CallToolResult:
    """A page of tasks, newest first, optionally filtered by state and/or assignee. When
    `next_cursor` is not null, pass it as `cursor` for the next page."""

    async def call(s: Session) -> dict[str, Any]:
        page = await s.town.list_tasks(state=state, agent=agent, limit=limit, cursor=cursor)
        return {"tasks": page.tasks, "next_cursor": page.next_cursor}

    return await answer(ctx, "list_tasks", call)


async def get_task(ctx: ToolContext, task_id: TaskId) -> CallToolResult:
    """One task in full: description, state, assignee, attempt, result or error; `depends_on`
    (the tasks it waits for, as #N) and, while it is `waiting`, `waiting_on` (those not done)."""

    async def call(s: Session) -> dict[str, Any]:
        return {"task": await s.town.get_task(task_id)}

    return await answer(ctx, "get_task", call)


async def task_done(
    ctx: ToolContext,
    task_id: TaskId,
    result: Annotated[str, Field(description=(
        "What you did and what came out of it, for the task's creator (at most 64 KiB)."))],
) -> CallToolResult:
    """Report a task assigned to you as completed, with its result. The task's creator is told
    and the task's message is acknowledged. Only the assignee (or the conductor) may do this."""

    async def call(s: Session) -> dict[str, Any]:
        return {"task": await s.town.complete_task(task_id, result, by=s.agent)}

    return await answer(ctx, "task_done", call)


async def task_failed(
    ctx: ToolContext,
    task_id: TaskId,
    error: Annotated[str, Field(description="Why it failed, so someone can retry or reassign it.")],
) -> CallToolResult:
    """Report a task assigned to you as failed, with the reason. The task's creator is told."""

    async def call(s: Session) -> dict[str, Any]:
        return {"task": await s.town.fail_task(task_id, error, by=s.agent)}

    return await answer(ctx, "task_failed", call)


async def cancel_task(
    ctx: ToolContext,
    task_id: TaskId,
    reason: Annotated[str | None, Field(description="Why it is cancelled.")] = None,
) -> CallToolResult:
    """Cancel a task that is not finished (its creator, its assignee or the conductor may). The
    creator and the assignee are told."""

    async def call(s: Session) -> dict[str, Any]:
        return {"task": await s.town.cancel_task(task_id, reason, by=s.agent)}

    return await answer(ctx, "cancel_task", call)


async def send_message(
    ctx: ToolContext,
    to: Annotated[str, Field(min_length=1, max_length=32, description=(
        "The recipient's agent name, 'conductor' for the human, or 'all' for every live agent."))],
    body: Annotated[str, Field(min_length=1, description="The message text (at most 64 KiB).")],
    kind: Annotated[KindName, Field(description=(
        "info: FYI; query: you expect an answer; task: actionable work; ack: a confirmation."))] = "info",
    priority: Annotated[PriorityName, Field(description="Urgent messages are received first.")] = "normal",
    reply_to: Annotated[str | None, Field(max_length=128, description=(
        "The id of the message you are answering (from receive)."))] = None,
) -> CallToolResult:
    """Send a message to another agent (or 'all'). It waits in their inbox until they receive it;
    delivery is durable. To answer a message, pass its id as `reply_to`."""

    async def call(s: Session) -> dict[str, Any]:
        receipt = await s.town.send(s.agent, to, body, kind=kind, priority=priority, reply_to=reply_to)
        if reply_to and s.push is not None:
            await s.push.acted_on([reply_to])  # a reply shows the pushed message was seen
        return {"message": receipt.message, "copies": len(receipt.copies)}

    return await answer(ctx, "send_message", call)


async def receive(
    ctx: ToolContext,
    timeout_s: Annotated[float, Field(ge=0, le=int(MAX_RECEIVE_TIMEOUT_S), description=(
        "How long to wait for a message, in seconds (0 = just look)."))] = 30,
    max_messages: Annotated[int, Field(ge=1, le=MAX_BATCH, description="At most this many.")] = 10,
) -> CallToolResult:
    """Wait for your next messages (highest priority first) and return them; call it whenever
    you have nothing to do. `timed_out: true` with no messages just means nothing arrived in
    time: call it again. Each message has an `id` (pass it as `reply_to` to answer) and, for
    work, a `task_id` (finish it with task_done / task_failed). Calling receive again
    acknowledges the previous batch; unacknowledged messages come back if your session dies,
    and a batch whose call you cancelled or timed out comes back. One receive at a time: a new
    one replaces one still waiting (that one answers conflict). One result holds at most
    ~100 KB of message bodies: when `inbox.pending` is not 0, more are waiting, so call
    receive again."""

    async def call(s: Session) -> dict[str, Any]:
        async def progress(elapsed_s: float, total_s: float) -> None:
            await ctx.report_progress(elapsed_s, total_s, f"waiting for messages ({elapsed_s:.0f} s)")

        async with s.push.receiving() if s.push is not None else nullcontext():
            got = await s.town.receive(
                s.agent, timeout_s=timeout_s, max_messages=max_messages, session=s.session_id,
                batch=s.receipt(ctx.request_id), progress=progress,
                progress_every_s=s.progress_every_s,
            )
        # the counts come with the batch: no second Redis call on the hop's critical path
        inbox = {"pending": got.inbox.pending, "urgent": got.inbox.urgent}
        return {"messages": got.messages, "timed_out": got.timed_out, "inbox": inbox}

    return await answer(ctx, "receive", call)


async def ack(
    ctx: ToolContext,
    message_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(
        min_length=1, max_length=1000, description="Ids of messages you received.")],
) -> CallToolResult:
    """Acknowledge received messages now, so they are never delivered again even if your session
    dies. Optional: your next receive (or task_done/task_failed) acknowledges them too."""

    async def call(s: Session) -> dict[str, Any]:
        acknowledged = await s.town.ack(s.agent, message_ids)
        if s.push is not None:
            s.push.forget(message_ids)
        return {"acknowledged": acknowledged}

    return await answer(ctx, "ack", call)


def _hints(read_only: bool = False, destructive: bool = False, idempotent: bool = False,
           open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive,
                           idempotent_hint=idempotent, open_world_hint=open_world)


READ = _hints(read_only=True, idempotent=True)

# name order is SPEC 6's table order; the hints tell hosts which calls are safe to auto-approve.
TOOLS: list[tuple[Any, ToolAnnotations]] = [
    (whoami, READ),
    (town_status, READ),
    (list_agents, READ),
    (spawn_agent, _hints(open_world=True)),
    (kill_agent, _hints(destructive=True, idempotent=True)),
    (assign_task, _hints()),
    (claim_task, _hints()),
    (list_tasks, READ),
    (get_task, READ),
    (task_done, _hints()),
    (task_failed, _hints()),
    (cancel_task, _hints(destructive=True)),
    (send_message, _hints()),
    (receive, _hints()),
    (ack, _hints(idempotent=True)),
]


def tidy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown arguments and drop pydantic's generated titles (noise for a model)."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema["additionalProperties"] = False
    return schema


def catalogue() -> list[Tool]:
    """The tools, ready for ``MCPServer(tools=...)`` (built once per process: ``tt serve``
    builds a server per session, and building the tools is most of that cost)."""
    return list(_catalogue())


@functools.cache
def _catalogue() -> tuple[Tool, ...]:
    tools = []
    for fn, hints in TOOLS:
        tool = Tool.from_function(fn, description=unwrap(fn.__doc__),
                                  annotations=hints, structured_output=False)
        tool.parameters = tidy_schema(tool.parameters)
        tools.append(tool)
    return tuple(tools)
