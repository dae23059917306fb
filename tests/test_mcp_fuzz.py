"""Property: whatever arguments a client sends, every tool answers with a success or a coded
error, never a crash, and the server keeps answering.

Arguments mix values that fit each property's published schema (so calls get past the
gate and reach the Town) with junk of every JSON type and unknown keys.  Hypothesis runs in
a worker thread and drives the async client through ``anyio.from_thread``, so one client
session (one server) sees every example of a tool.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp_support import CODES, connect, ok, payload
from mcp_types import CallToolResult

from tinytown.town import Town
from tinytown_mcp.tools import TOOLS

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

NAMES = ["conductor", "fuzzer", "alice", "nobody", "all", "Supervisor", "BAD NAME", ""]

junk: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def fitting(prop: dict[str, Any], words: list[str]) -> st.SearchStrategy[Any]:
    """Values that (mostly) satisfy one property schema, plus the edges of its bounds."""
    if "anyOf" in prop:
        return st.one_of(*(fitting(option, words) for option in prop["anyOf"]))
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    kind = prop.get("type")
    if kind == "null":
        return st.none()
    if kind == "integer":
        return st.integers(prop.get("minimum", -10) - 1, prop.get("maximum", 1000) + 1)
    if kind == "number":
        return st.floats(prop.get("minimum", -10) - 1, prop.get("maximum", 1000) + 1)
    if kind == "array":
        return st.lists(fitting(prop.get("items", {}), words), max_size=prop.get("maxItems", 5) + 1)
    if kind == "string":
        return st.sampled_from(words) | st.text(max_size=40)
    return junk


def arguments(schema: dict[str, Any], words: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Required arguments usually present and fitting, optional ones sometimes; or junk keys."""
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))

    def value(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(fitting(prop, words), fitting(prop, words), junk)

    known = st.fixed_dictionaries(
        {name: value(prop) for name, prop in props.items() if name in required},
        optional={name: value(prop) for name, prop in props.items() if name not in required},
    )
    anything = st.fixed_dictionaries({}, optional={name: value(prop) for name, prop in props.items()})
    extra = st.dictionaries(st.text(max_size=10), junk, min_size=1, max_size=2)
    return st.one_of(known, known, anything, st.builds(lambda a, b: {**b, **a}, known, extra))


def outcome(result: CallToolResult) -> str:
    """``ok`` or the error code; fails on anything else."""
    if not result.is_error:
        payload(result)
        return "ok"
    text = result.content[0].text  # type: ignore[union-attr]
    code, _, sentence = text.partition(": ")
    assert code in CODES, text
    assert len(sentence) > 5, text
    return code


@pytest.mark.parametrize("tool", [fn.__name__ for fn, _ in TOOLS])
async def test_random_arguments_get_a_success_or_a_coded_error(real_town: Town, tool: str) -> None:
    await real_town.register_agent("alice")
    async with connect(real_town, "fuzzer") as client:
        schema = next(t.input_schema for t in (await client.list_tools()).tools if t.name == tool)
        # real ids, so that some calls get past the schema and act on existing records
        mine = await real_town.assign("for the fuzzer", agent="fuzzer")
        theirs = await real_town.assign("for alice", agent="alice")
        backlog = await real_town.assign("for anyone")
        note = await real_town.send("alice", "fuzzer", "hello")
        words = [*NAMES, mine.id, theirs.id, backlog.id, note.message.id, "done", "pending"]

        async def call(args: dict[str, Any]) -> CallToolResult:
            if tool == "receive":  # a pending message: a valid receive returns at once
                await real_town.send("alice", "fuzzer", "ping")
            with anyio.fail_after(10):
                return await client.call_tool(tool, args)

        # derandomize: the same 40 examples every run.  Drawn afresh each run, the check below
        # failed about once in 100 runs of kill_agent (its first, simplest example is refused,
        # and ~1 in 9 of the others reaches the Town) although nothing was wrong.
        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(args=arguments(schema, words))
        def property_holds(args: dict[str, Any]) -> None:
            seen.add(outcome(anyio.from_thread.run(call, args)))

        seen: set[str] = set()
        await anyio.to_thread.run_sync(property_holds)
        # the generator must also reach the Town, not only the argument gate
        assert seen - {"invalid"} or tool == "spawn_agent", f"every {tool} example was refused"
        assert (await ok(client, "whoami"))["agent"]["name"] == "fuzzer"
