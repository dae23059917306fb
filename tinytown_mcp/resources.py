"""Resources (read-only JSON views of the town) and the two prompts.

Resources read through the same Town methods as the tools.  A missing agent or task is a
``ResourceNotFoundError`` (JSON-RPC invalid params) whose message starts ``not_found:``;
any other Tinytown error keeps its code in the message too.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from tinytown.errors import NotFound, TinytownError
from tinytown.town import Town
from tinytown_mcp import guides
from tinytown_mcp.adapter import jsonable

T = TypeVar("T")
JSON = "application/json"


async def _read(result: Awaitable[T]) -> str:
    try:
        value = await result
    except NotFound as error:
        raise ResourceNotFoundError(str(error)) from None
    except TinytownError as error:
        raise ResourceError(str(error)) from None
    return json.dumps(jsonable(value), ensure_ascii=False, indent=1)


def register_resources(server: MCPServer[Any], town: Town, agent: str) -> None:
    """``tinytown://town``, ``…/agents``, ``…/agents/{name}``, ``…/tasks/{task_id}``, ``…/inbox``."""

    @server.resource("tinytown://town", name="town", mime_type=JSON,
                     description="Town status: Redis (masked), agents with inbox counts, task counts.")
    async def town_status() -> str:
        return await _read(town.status())

    @server.resource("tinytown://agents", name="agents", mime_type=JSON,
                     description="Every agent record, the conductor first.")
    async def agents() -> str:
        return await _read(town.list_agents())

    @server.resource("tinytown://agents/{name}", name="agent", mime_type=JSON,
                     description="One agent record by name.")
    async def agent_record(name: str) -> str:
        return await _read(town.get_agent(name))

    @server.resource("tinytown://tasks/{task_id}", name="task", mime_type=JSON,
                     description="One task by id.")
    async def task(task_id: str) -> str:
        return await _read(town.get_task(task_id))

    @server.resource("tinytown://inbox", name="inbox", mime_type=JSON,
                     description=f"{agent}'s pending messages in receive order, read without consuming.")
    async def inbox() -> str:
        return await _read(town.inbox(agent))


def register_prompts(server: MCPServer[Any], town: Town, agent: str) -> None:
    @server.prompt(name="agent_guide", title="How an agent works in Tinytown")
    def agent_guide() -> str:
        """How an agent works here: receive, work, task_done / send_message, receive again."""
        return guides.agent_guide(agent, town.name)

    @server.prompt(name="conductor_guide", title="How the conductor runs a Tinytown")
    def conductor_guide() -> str:
        """How the conductor spawns agents, assigns tasks and collects results."""
        return guides.conductor_guide(agent, town.name)
