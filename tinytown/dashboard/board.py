"""What the dashboard shows, read through Town operations (no Redis here).

Each function returns plain JSON-ready data: the page renders it as it comes.  Agents are
named by name, tasks carry their ``number`` (``#N``), as everywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tinytown.conversation import HistoryEntry, HistoryFilter
from tinytown.models import CONDUCTOR, TaskState, public_json
from tinytown.roundlog import choose_round, read_chunk

if TYPE_CHECKING:
    from tinytown.town import Town

BOARD_PER_STATE = 50
"""Tasks shown per state on the board (newest first); the counts say how many there are."""
FEED_COUNT = 200


jsonable = public_json  # one definition for every face: tinytown.models


async def state(town: Town, per_state: int = BOARD_PER_STATE) -> dict[str, Any]:
    """The town at a glance: agents (state, host, current task, inbox, staleness) and the
    task board by state."""
    status = await town.status()
    board: dict[str, Any] = {}
    for task_state in TaskState:  # every state the town knows, in its order
        page = await town.list_tasks(state=task_state, limit=per_state)
        board[task_state.value] = jsonable(page.tasks)
    current = [v.agent.current_task for v in status.agents if v.agent.current_task]
    return {
        "town": status.town,
        "root": status.root,
        "redis": status.redis,
        "server": str(status.server) if status.server else None,
        "now": status.now,
        "conductor": CONDUCTOR,
        "agents": jsonable(status.agents),
        "counts": status.tasks,
        "board": board,
        "numbers": await town.task_numbers(current),
    }


def entry_json(entry: HistoryEntry, flt: HistoryFilter | None = None) -> dict[str, Any]:
    """One event of the feed; ``matches``: whether it passes the page's feed filter."""
    return {**jsonable(entry), "matches": flt.matches(entry) if flt is not None else True}


async def feed(
    town: Town, *, agent: str | None = None, task: str | None = None, kind: str | None = None,
    count: int = FEED_COUNT,
) -> dict[str, Any]:
    """The newest events passing the filter, oldest first, with message bodies; ``last``:
    the stream's newest id when this was read (where the live stream goes on)."""
    flt = await town.conversation.filter(agent=agent or None, task=task or None, kind=kind or None)
    last = await town.last_event_id()
    entries = await town.conversation.history(count, flt)
    return {"last": last, "entries": [entry_json(e) for e in entries]}


async def thread(town: Town, task: str) -> dict[str, Any]:
    """A task (any reference) with its thread, as ``tt task show --json``."""
    found = await town.conversation.thread(task)
    return {**jsonable(found.task), "thread": jsonable(found.messages)}


async def round_log(
    town: Town, agent: str, round_number: int | None = None, offset: int | None = None
) -> dict[str, Any]:
    """A window of an agent's round log (its tail unless ``offset``), as ``tt logs``."""
    choice = await choose_round(town, agent, round_number, none_yet_ok=True)
    chunk = read_chunk(choice.path, offset) if choice.path is not None else None
    return {
        "agent": choice.agent,
        "round": choice.round,
        "rounds": list(choice.rounds),
        "text": chunk.text if chunk else "",
        "start": chunk.start if chunk else 0,
        "end": chunk.end if chunk else 0,
        "size": chunk.size if chunk else 0,
    }
