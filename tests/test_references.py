"""Short task references: every task has a per-town number, and every face takes ``#N``,
``N``, the id or a unique id prefix, resolved by one Town method (``resolve_task``).

Agents appear by name in every output (``assigned_to``), their id only as ``assigned_to_id``.
"""

from __future__ import annotations

import pytest
from conftest import make_config
from mcp_support import connect, ok, refused
from redis.asyncio import Redis
from test_cli import one_error_line, register, tt, tt_ok

from tinytown.errors import Invalid, NotFound
from tinytown.town import Town


async def _shared_prefix(town: Town, limit: int = 4000) -> tuple[str, list[str]]:
    """Create backlog tasks until two ids share their first 4 characters (the birthday bound
    makes that ~300 tasks; 4000 without one has a probability below 1e-50)."""
    seen: dict[str, list[str]] = {}
    for i in range(limit):
        task = await town.assign(f"filler {i}")
        group = seen.setdefault(task.id[:4], [])
        group.append(task.id)
        if len(group) == 2:
            return task.id[:4], group
    raise AssertionError("no two of 4000 task ids shared a 4-character prefix")


def _unambiguous_prefix(task_id: str, others: list[str], numbers: list[int]) -> str:
    """The shortest prefix (4+ characters) of ``task_id`` that no other id starts with and that
    is not another task's number: a fixed ``task_id[:4]`` is another id's prefix, or "0001"
    while #1 exists, about once in 20000 runs of each tier, and is then rightly refused as
    ambiguous."""
    for length in range(4, len(task_id)):
        prefix = task_id[:length]
        if not any(o.startswith(prefix) for o in others) and not (
            prefix.isdigit() and int(prefix) in numbers
        ):
            return prefix
    return task_id


# --------------------------------------------------------------------- the Town


@pytest.mark.anyio
async def test_tasks_are_numbered_in_creation_order_and_resolved_by_every_reference_form(
    town: Town,
) -> None:
    await town.register_agent("bob")
    first = await town.assign("one", agent="bob")
    second = await town.assign("two")
    third = await town.assign("three", agent="bob")
    assert [first.number, second.number, third.number] == [1, 2, 3]
    assert (await town.get_task(third.id)).number == 3
    short = _unambiguous_prefix(second.id, [first.id, third.id], numbers=[1, 3])
    for ref in ("#2", "2", " #2 ", second.id, short, short.upper()):
        assert await town.resolve_task(ref) == second.id, ref
    assert (await town.get_task("#3")).description == "three"


@pytest.mark.anyio
async def test_unknown_number_or_prefix_is_not_found_and_says_which_forms_work(town: Town) -> None:
    task = await town.assign("only")
    other_start = "0" if task.id[0] != "0" else "1"
    for ref in ("#9", "9", other_start + "abc", "zzzzzz", "ab"):
        with pytest.raises(NotFound):
            await town.resolve_task(ref)
    with pytest.raises(NotFound, match="#N"):
        await town.get_task("not-a-task")


@pytest.mark.real_redis
@pytest.mark.anyio
async def test_ambiguous_prefix_is_invalid_and_names_the_candidates(real_town: Town) -> None:
    prefix, ids = await _shared_prefix(real_town)
    with pytest.raises(Invalid) as refused_:
        await real_town.get_task(prefix)
    text = str(refused_.value)
    assert all(task_id in text for task_id in ids), text
    numbers = [(await real_town.get_task(t)).number for t in ids]
    assert all(f"#{n}" in text for n in numbers), text
    # one more character (or the whole id) settles it
    assert await real_town.resolve_task(ids[0]) == ids[0]


@pytest.mark.real_redis
@pytest.mark.anyio
async def test_bare_digits_that_are_a_number_and_the_start_of_another_id_are_ambiguous(
    real_town: Town,
) -> None:
    """Ids are hex, so ``0123`` may be task #123 and the start of another task's id; such a
    reference is refused, naming both, rather than silently taken as the number."""
    by_number: dict[int, str] = {}
    by_digits: dict[int, str] = {}  # int(first 4 characters) -> id, for ids starting with 4 digits
    found: tuple[str, str] | None = None  # (numbered id, id starting with that number's digits)
    for i in range(4000):  # ~360 expected (birthday bound over 4-hex-digit prefixes)
        task = await real_town.assign(f"filler {i}")
        assert task.number is not None
        by_number[task.number] = task.id
        if task.id[:4].isdigit():
            by_digits.setdefault(int(task.id[:4]), task.id)
        for number in (task.number, int(task.id[:4]) if task.id[:4].isdigit() else 0):
            if by_number.get(number) not in (None, by_digits.get(number)) and number in by_digits:
                found = (by_number[number], by_digits[number])
                break
        if found:
            break
    assert found, "no task id began with the 4 digits of another task's number in 4000 tasks"
    numbered, prefixed = found
    reference = prefixed[:4]
    with pytest.raises(Invalid) as refused_:
        await real_town.get_task(reference)
    assert numbered in str(refused_.value) and prefixed in str(refused_.value), refused_.value
    assert await real_town.resolve_task("#" + reference) == numbered
    assert await real_town.resolve_task(prefixed) == prefixed


@pytest.mark.real_redis
@pytest.mark.anyio
async def test_concurrent_creators_get_distinct_consecutive_numbers(
    redis_socket: str, town_name: str
) -> None:
    import anyio

    clients = [Redis(unix_socket_path=redis_socket, decode_responses=True) for _ in range(4)]
    towns = [Town(c, make_config(town_name)) for c in clients]
    await towns[0].ensure_conductor()
    numbers: list[int] = []

    async def create(town: Town, n: int) -> None:
        for i in range(n):
            numbers.append((await town.assign(f"task {i}")).number or 0)

    try:
        async with anyio.create_task_group() as tg:
            for town in towns:
                tg.start_soon(create, town, 25)
        assert sorted(numbers) == list(range(1, 101))
        for n in (1, 50, 100):
            assert (await towns[0].get_task(f"#{n}")).number == n
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.anyio
async def test_assignee_is_named_in_public_json_with_the_id_as_an_extra_field(town: Town) -> None:
    bob = await town.register_agent("bob")
    task = await town.assign("x", agent="bob")
    public = (await town.get_task(task.id)).model_dump(mode="json", by_alias=True)
    assert (public["assigned_to"], public["assigned_to_id"], public["number"]) == ("bob", bob.id, 1)
    assert "assignee" not in public
    claimed = await town.claim("bob", (await town.assign("y")).id)
    public = claimed.model_dump(mode="json", by_alias=True)
    assert (public["assigned_to"], public["assigned_to_id"]) == ("bob", bob.id)
    backlog = (await town.assign("z")).model_dump(mode="json", by_alias=True)
    assert (backlog["assigned_to"], backlog["assigned_to_id"]) == (None, None)


# --------------------------------------------------------------------- tt


@pytest.mark.e2e
def test_tt_takes_hash_number_plain_number_and_id_prefix_for_a_task(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    made = [tt_ok("assign", "bob", f"job {i}", env=tt_env) for i in range(3)]
    third = made[2]
    assert [t["number"] for t in made] == [1, 2, 3]
    assert (third["assigned_to"], third["created_by"]) == ("bob", "conductor")
    for ref in ("#3", "3", third["id"][:6], third["id"]):
        shown = tt_ok("task", "show", ref, env=tt_env)
        assert (shown["id"], shown["number"]) == (third["id"], 3), ref
    plain = tt("task", "show", "#3", env=tt_env)
    assert plain.returncode == 0 and "#3" in plain.stdout and "job 2" in plain.stdout

    missing = tt("task", "show", "#42", env=tt_env)
    assert "#42" in one_error_line(missing, "tt: not_found: ")
    junk = tt("task", "show", "nothing-like-a-task", env=tt_env)
    one_error_line(junk, "tt: not_found: ")

    done = tt("task", "done", "2", "finished", env={**tt_env, "TINYTOWN_AGENT": "bob"})
    assert done.returncode == 0 and done.stdout.strip() == "task #2 completed", done
    cancelled = tt_ok("task", "cancel", "#1", "--reason", "not needed", env=tt_env)
    assert (cancelled["number"], cancelled["state"]) == (1, "cancelled")

    listing = tt("tasks", env=tt_env)
    rows = listing.stdout.splitlines()
    assert rows[0].split()[:3] == ["TASK", "ID", "STATE"]
    assert [r.split()[0] for r in rows[1:]] == ["#3", "#2", "#1"]
    assert third["id"] not in listing.stdout  # short references, not 36-character ids
    assigned = tt("assign", "bob", "one more", env=tt_env)
    assert assigned.stdout.startswith("assigned task #4 to bob"), assigned.stdout


@pytest.mark.e2e
def test_tt_refuses_an_ambiguous_prefix_naming_the_candidates(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    import anyio

    async def make() -> tuple[str, list[str]]:
        client = Redis(unix_socket_path=redis_socket, decode_responses=True)
        try:
            town = Town(client, make_config(town_name))
            await town.ensure_conductor()
            return await _shared_prefix(town)
        finally:
            await client.aclose()

    prefix, ids = anyio.run(make)
    line = one_error_line(tt("task", "show", prefix, env=tt_env), "tt: invalid: ")
    assert all(task_id in line for task_id in ids), line
    assert tt_ok("task", "show", ids[1], env=tt_env)["id"] == ids[1]


# --------------------------------------------------------------------- MCP


@pytest.mark.real_redis
@pytest.mark.anyio
async def test_mcp_task_tools_take_short_references(real_town: Town) -> None:
    bob = await real_town.register_agent("bob")
    async with connect(real_town, "bob") as agent, connect(real_town) as conductor:
        first = (await ok(conductor, "assign_task", description="a", agent="bob"))["task"]
        second = (await ok(conductor, "assign_task", description="b", agent="bob"))["task"]
        child = (await ok(conductor, "assign_task", description="c", parent_id="#1"))["task"]
        assert (first["number"], second["number"], child["parent_id"]) == (1, 2, first["id"])
        got = (await ok(agent, "get_task", task_id="#2"))["task"]
        assert (got["id"], got["assigned_to"], got["assigned_to_id"]) == (second["id"], "bob", bob.id)
        assert (await ok(agent, "get_task", task_id=first["id"][:5]))["task"]["id"] == first["id"]
        done = (await ok(agent, "task_done", task_id="1", result="did a"))["task"]
        cancelled = (await ok(conductor, "cancel_task", task_id="#2", reason="enough"))["task"]
        claimed = (await ok(agent, "claim_task", task_id="#3"))["task"]
        missing = await refused(agent, "get_task", "not_found", task_id="#99")
    assert (done["state"], done["id"]) == ("completed", first["id"])
    assert (cancelled["state"], cancelled["id"]) == ("cancelled", second["id"])
    assert (claimed["id"], claimed["assigned_to"]) == (child["id"], "bob")
    assert "#99" in missing
