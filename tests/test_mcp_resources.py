"""Resources and prompts of the MCP server, read through a real client session."""

from __future__ import annotations

import json

import pytest
from mcp.shared.exceptions import MCPError
from mcp_support import connect, ok

from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]


async def read(client: object, uri: str) -> object:
    result = await client.read_resource(uri)  # type: ignore[attr-defined]
    [content] = result.contents
    assert content.mime_type == "application/json"
    return json.loads(content.text)


async def test_resources_list_the_five_views(real_town: Town) -> None:
    async with connect(real_town, "alice") as client:
        static = {str(r.uri) for r in (await client.list_resources()).resources}
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert static == {"tinytown://town", "tinytown://agents", "tinytown://inbox"}
    assert templates == {"tinytown://agents/{name}", "tinytown://tasks/{task_id}"}


async def test_resources_read_the_town_agents_and_tasks(real_town: Town) -> None:
    task = await real_town.assign("read me")
    async with connect(real_town, "alice") as client:
        town = await read(client, "tinytown://town")
        agents = await read(client, "tinytown://agents")
        alice = await read(client, "tinytown://agents/alice")
        shown = await read(client, f"tinytown://tasks/{task.id}")
    assert town["town"] == real_town.name  # type: ignore[index]
    assert [a["name"] for a in agents] == ["conductor", "alice"]  # type: ignore[attr-defined]
    assert alice["name"] == "alice" and alice["cli"] is None  # type: ignore[index]
    assert shown["description"] == "read me" and shown["state"] == "pending"  # type: ignore[index]


async def test_the_inbox_resource_shows_pending_mail_without_consuming_it(real_town: Town) -> None:
    async with connect(real_town, "alice") as client:
        await real_town.send("conductor", "alice", "second", priority="low")
        await real_town.send("conductor", "alice", "first", priority="urgent")
        inbox = await read(client, "tinytown://inbox")
        assert [m["body"] for m in inbox] == ["first", "second"]  # type: ignore[attr-defined]
        assert inbox[0]["from"] == "conductor"  # type: ignore[index]
        assert (await ok(client, "whoami"))["inbox"] == {"pending": 2, "urgent": 1}
        assert len((await ok(client, "receive", timeout_s=1))["messages"]) == 2


async def test_missing_agents_and_tasks_are_not_found(real_town: Town) -> None:
    async with connect(real_town, "alice") as client:
        for uri in ("tinytown://agents/nobody", "tinytown://tasks/no-such-task"):
            with pytest.raises(MCPError) as info:
                await client.read_resource(uri)
            assert str(info.value.error.message).startswith("not_found: ")


async def test_prompts_explain_the_loop_with_the_identity_and_the_town(real_town: Town) -> None:
    async with connect(real_town, "alice") as client:
        names = [p.name for p in (await client.list_prompts()).prompts]
        guide = (await client.get_prompt("agent_guide")).messages[0].content
        conductor = (await client.get_prompt("conductor_guide")).messages[0].content
    assert names == ["agent_guide", "conductor_guide"]
    text = guide.text  # type: ignore[union-attr]
    assert "'alice'" in text and real_town.name in text
    assert text.index("`receive`") < text.index("`task_done(task_id, result)`")
    assert "assign_task" in conductor.text  # type: ignore[union-attr]
