"""Plans (``tt plan FILE``: many tasks with dependencies, created at once) and handing out
the backlog (``tt backlog assign``): the Town operations and the CLI, via subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ROOT, make_config
from redis.asyncio import Redis
from test_cli import one_error_line, register, tt, tt_ok

from tinytown.errors import Invalid, NotFound
from tinytown.models import MessageKind, TaskState
from tinytown.plans import TaskSpec, parse_plan
from tinytown.town import Town

PLAN = """
[[tasks]]
key = "schema"
description = "Design the schema"
agent = "bob"

[[tasks]]
key = "api"
description = "Write the API"
agent = "alice"
priority = "high"
tags = ["backend"]
depends_on = ["schema"]

[[tasks]]
key = "docs"
description = "Document it"
depends_on = "schema"

[[tasks]]
key = "release"
description = "Release"
depends_on = ["api", "docs"]
"""


def _spec(key: str, *deps: str, **fields: Any) -> TaskSpec:
    return TaskSpec(key=key, description=f"do {key}", depends_on=list(deps), **fields)


async def _count_tasks(town: Town) -> int:
    return int(await town.redis.zcard(town.keys.tasks))


# --------------------------------------------------------------------- the Town


@pytest.mark.anyio
async def test_a_plan_starts_what_needs_nothing_and_the_rest_waits_in_dependency_order(town: Town) -> None:
    await town.register_agent("bob")
    await town.register_agent("alice")
    made = await town.plans.create(parse_plan(PLAN))
    assert not made.dry_run
    assert [[p.key for p in level] for level in made.levels] == [["schema"], ["api", "docs"], ["release"]]
    by_key = {p.key: p.task for p in made.tasks}
    assert [by_key[k].number for k in ("schema", "api", "docs", "release")] == [1, 2, 3, 4]  # file order
    assert by_key["schema"].state == TaskState.ASSIGNED
    assert {by_key[k].state for k in ("api", "docs", "release")} == {TaskState.WAITING}
    assert by_key["release"].depends_on_refs == ["#2", "#3"]
    stored = await town.get_task("#4")
    assert stored.model_dump(mode="json", by_alias=True)["depends_on"] == ["#2", "#3"]
    assert (await town.get_task("#2")).tags == ["backend"]

    await town.complete_task("#1", "schema ready", by="bob")
    assert (await town.get_task("#2")).state == TaskState.ASSIGNED
    assert (await town.get_task("#3")).state == TaskState.PENDING
    assert (await town.get_task("#4")).waiting_on == [by_key["api"].id, by_key["docs"].id]


@pytest.mark.anyio
async def test_a_dry_run_lists_the_start_order_by_level_and_creates_nothing(town: Town) -> None:
    await town.register_agent("bob")
    await town.register_agent("alice")
    preview = await town.plans.create(parse_plan(PLAN), dry_run=True)
    assert preview.dry_run
    assert [(p.key, p.level, p.task.state.value) for p in preview.tasks] == [
        ("schema", 0, "assigned"), ("api", 1, "waiting"), ("docs", 1, "waiting"), ("release", 2, "waiting")]
    assert preview.tasks[1].depends_on == ["schema"]
    assert await _count_tasks(town) == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("specs", "error", "says"), [
    ([_spec("a"), _spec("a")], Invalid, "task 'a': the key is used twice (tasks 1 and 2"),
    ([_spec("a", "b")], Invalid, "task 'a': depends_on names 'b', which is no key of this plan"),
    ([_spec("a", "c"), _spec("b", "a"), _spec("c", "b"), _spec("d")], Invalid,
     "the plan has a cycle: a -> c -> b -> a"),
    ([_spec("a", "a")], Invalid, "the plan has a cycle: a -> a"),
    ([_spec("a"), _spec("b", agent="nobody")], NotFound, "task 'b': no agent named 'nobody'"),
    ([_spec("a", priority="asap")], Invalid, "task 'a': priority must be one of urgent"),
    ([_spec("a", "#7")], NotFound, "task 'a': depends_on '#7': no task #7"),
    ([_spec("bad key")], Invalid, "task 'bad key': a key is"),
    ([], Invalid, "the plan has no tasks"),
])
async def test_a_bad_plan_is_refused_naming_the_key_and_nothing_is_created(
    town: Town, specs: list[TaskSpec], error: type[Exception], says: str
) -> None:
    for dry_run in (True, False):
        with pytest.raises(error) as refused:
            await town.plans.create(specs, dry_run=dry_run)
        assert says in str(refused.value), str(refused.value)
    assert await _count_tasks(town) == 0


@pytest.mark.anyio
async def test_a_plan_depending_on_a_failed_task_is_refused_and_on_a_completed_one_starts(town: Town) -> None:
    await town.register_agent("bob")
    done = await town.assign("done", agent="bob")
    await town.complete_task(done.id, "ok", by="bob")
    broken = await town.assign("broken", agent="bob")
    await town.fail_task(broken.id, "no", by="bob")
    with pytest.raises(Invalid, match=f"task 'b': depends_on '{broken.ref}': task {broken.ref} is failed"):
        await town.plans.create([_spec("a", done.ref), _spec("b", broken.ref)])
    made = await town.plans.create([_spec("a", done.ref, agent="bob"), _spec("b", done.id, "a")])
    assert [p.task.state for p in made.tasks] == [TaskState.ASSIGNED, TaskState.WAITING]
    assert made.tasks[1].task.depends_on_refs == ["#3", done.ref]  # the refused plan took no number


@pytest.mark.anyio
async def test_a_plan_is_all_or_nothing_when_one_delivery_cannot_be_made(
    redis_socket: str, town_name: str
) -> None:
    client = Redis(unix_socket_path=redis_socket, decode_responses=True)
    try:
        town = Town(client, make_config(town_name, limits={"max_inbox": 1}))
        await town.ensure_conductor()
        await town.register_agent("bob")
        await town.register_agent("full")
        await town.send("conductor", "full", "fills the inbox")
        with pytest.raises(Invalid, match="inbox of full is full"):
            await town.plans.create([_spec("a", agent="bob"), _spec("b", "a"), _spec("c", agent="full")])
        assert await _count_tasks(town) == 0
        assert await town.inbox("bob") == []
    finally:
        await client.aclose()


async def _client_commands(redis: Redis, town: str, action: Any) -> tuple[Any, list[str]]:
    """Run ``action()`` and return its result with the names of the commands clients sent
    about ``town`` meanwhile, seen by the server's MONITOR (commands a script issues are
    tagged ``lua`` there and left out: they are part of one round trip)."""
    marker = f"end-of-action-{id(action)}"
    sent: list[str] = []
    async with redis.monitor() as monitor:
        result = await action()
        await redis.echo(marker)
        with anyio.fail_after(30):
            while True:
                seen = await monitor.next_command()
                if marker in seen["command"]:
                    return result, sent
                name = seen["command"].split(" ", 1)[0].upper()
                if seen["client_type"] != "lua" and f"tt:{{{town}}}:" in seen["command"]:
                    sent.append(name)


@pytest.mark.real_redis
@pytest.mark.anyio
async def test_a_plan_of_200_tasks_is_created_in_one_script_call(real_town: Town, real_redis: Redis) -> None:
    for name in ("bob", "alice", "carol"):
        await real_town.register_agent(name)
    agents = ["bob", "alice", "carol", None]
    specs = [_spec(f"t{i}", *([f"t{i - 1}"] if i % 10 else []), *([f"t{i - 20}"] if i >= 20 else []),
                   agent=agents[i % 4]) for i in range(200)]
    made, sent = await _client_commands(real_redis, real_town.name, lambda: real_town.plans.create(specs))
    assert sent.count("EVALSHA") == 1, sent  # the whole plan is one atomic script call
    assert len(sent) <= 12, sent  # plus a few reads: the creator, the 3 agents, a block of seqs
    assert len(made.tasks) == 200 and await _count_tasks(real_town) == 200
    assert sorted(p.task.number or 0 for p in made.tasks) == list(range(1, 201))
    assert [p.key for p in made.levels[0]] == ["t0", "t10"]
    level = {p.key: p.level for p in made.tasks}
    assert all(level[s.key] > level[d] for s in specs for d in s.depends_on)
    assert [p.level for p in made.tasks] == sorted(p.level for p in made.tasks)  # in start order
    assert len((await real_town.list_tasks(state="waiting", limit=500)).tasks) == 198  # all but t0, t10
    await real_town.complete_task("#1", "ok", by="bob")
    assert (await real_town.get_task("#2")).state == TaskState.ASSIGNED


@pytest.mark.anyio
async def test_backlog_assign_gives_an_agent_the_highest_priority_tasks_first(town: Town) -> None:
    await town.register_agent("bob")
    low = await town.assign("low", priority="low")
    normal = await town.assign("normal")
    urgent = await town.assign("urgent", priority="urgent")
    high = await town.assign("high", priority="high")
    given = await town.plans.hand_out("bob", count=3)
    assert [t.id for t in given] == [urgent.id, high.id, normal.id]
    assert all(t.state == TaskState.ASSIGNED and t.assignee == "bob" for t in given)
    delivered = [m.task_id for m in await town.inbox("bob") if m.kind == MessageKind.TASK]
    assert sorted(delivered, key=str) == sorted([urgent.id, high.id, normal.id])
    assert [t.id for t in (await town.list_tasks(state="pending")).tasks] == [low.id]
    assert [t.id for t in await town.plans.hand_out("bob", count=5)] == [low.id]  # what is left
    assert await town.plans.hand_out("bob") == []
    with pytest.raises(Invalid):
        await town.plans.hand_out()


@pytest.mark.anyio
async def test_backlog_assign_idle_gives_one_task_to_each_idle_agent(town: Town) -> None:
    for name in ("busy", "free1", "paused", "free2"):
        await town.register_agent(name)
    await town.update_agent("paused", state="paused")
    await town.assign("already busy", agent="busy")
    tasks = [await town.assign(f"job {i}") for i in range(3)]
    given = await town.plans.hand_out(idle=True)
    assert [(t.assignee, t.id) for t in given] == [("free1", tasks[0].id), ("free2", tasks[1].id)]
    assert await town.plans.hand_out(idle=True) == []  # nobody is idle now
    assert [t.id for t in (await town.list_tasks(state="pending")).tasks] == [tasks[2].id]


@pytest.mark.anyio
async def test_the_readme_plan_and_the_example_file_are_valid_plans_shown_as_documented(
    town: Town, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinytown.cli.plan_cmd import _show_plan
    from tinytown.config import example_text

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Plans and dependencies"):]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = section.split("$ tt plan plan.toml --dry-run\n", 1)[1].split("```", 1)[0]
    for name in ("alice", "bob"):
        await town.register_agent(name)
    for i in range(12):
        await town.assign(f"filler {i}")  # "#12" exists
    capsys.readouterr()
    _show_plan(await town.plans.create(parse_plan(toml), dry_run=True), Path("plan.toml"))
    assert capsys.readouterr().out == shown
    example = await town.plans.create(parse_plan(example_text("plan.example.toml")), dry_run=True)
    assert [[p.key for p in level] for level in example.levels] == [
        ["schema"], ["api", "tests"], ["ui"], ["release-notes"]]


# --------------------------------------------------------------------- tt


def _in_town(redis_socket: str, town_name: str, action: Any) -> Any:
    """Run ``action(town)`` on the town the ``tt`` subprocesses use (to set up or look)."""

    async def go() -> Any:
        client = Redis(unix_socket_path=redis_socket, decode_responses=True)
        try:
            town = Town(client, make_config(town_name))
            await town.ensure_conductor()
            return await action(town)
        finally:
            await client.aclose()

    return anyio.run(go)


@pytest.mark.e2e
def test_tt_plan_dry_run_prints_the_start_order_and_the_plan_creates_every_task(
    tt_env: dict[str, str], redis_socket: str, town_name: str, tmp_path: Path
) -> None:
    register(redis_socket, town_name, "bob", "alice")
    example = tt("plan", "--example", env=tt_env)
    assert example.returncode == 0 and len(parse_plan(example.stdout)) == 5, example.stderr
    shown = tt_ok("plan", "--example", env=tt_env)  # JSON, not the TOML text
    assert shown["text"] == example.stdout and len(shown["values"]["tasks"]) == 5
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(PLAN)
    dry = tt("plan", str(plan_file), "--dry-run", env=tt_env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert "4 tasks in 3 levels (dry run: nothing was created)" in lines[0]
    assert [line for line in lines if line.startswith("level")] == ["level 0:", "level 1:", "level 2:"]
    assert lines[1:3] == ["level 0:", "  schema -> bob [assigned]: Design the schema"]
    assert "  release -> backlog [waiting]: Release  (after api, docs)" in lines
    assert _in_town(redis_socket, town_name, _count_tasks) == 0
    as_json = tt_ok("plan", str(plan_file), "--dry-run", env=tt_env)
    assert as_json["levels"] == [["schema"], ["api", "docs"], ["release"]]

    made = tt_ok("plan", str(plan_file), env=tt_env)
    assert [(t["key"], t["task"]["number"], t["task"]["state"]) for t in made["tasks"]] == [
        ("schema", 1, "assigned"), ("api", 2, "waiting"), ("docs", 3, "waiting"), ("release", 4, "waiting")]
    assert made["tasks"][3]["task"]["depends_on"] == ["#2", "#3"]
    listing = tt("tasks", env=tt_env)
    assert "waiting on #2,#3" in listing.stdout, listing.stdout
    shown = tt("task", "show", "#4", env=tt_env).stdout
    assert "depends_on" in shown and "#2, #3" in shown, shown

    bad = tmp_path / "bad.toml"
    bad.write_text('[[tasks]]\nkey = "a"\ndescription = "x"\ndepends_on = ["b"]\n'
                   '[[tasks]]\nkey = "b"\ndescription = "y"\ndepends_on = ["a"]\n')
    assert "a -> b -> a" in one_error_line(tt("plan", str(bad), env=tt_env), "tt: invalid: ")
    bad.write_text('[[tasks]]\nkey = "a"\ndescripton = "x"\n')
    line = one_error_line(tt("plan", str(bad), "--dry-run", env=tt_env), "tt: invalid: ")
    assert "task 'a': unknown field descripton" in line
    assert _in_town(redis_socket, town_name, _count_tasks) == 4  # the refused plans created nothing


@pytest.mark.e2e
def test_tt_assign_depends_on_takes_every_reference_form(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    async def setup(town: Town) -> list[str]:
        await town.register_agent("bob")
        return [(await town.assign(f"job {i}", agent="bob")).id for i in range(4)]

    made = _in_town(redis_socket, town_name, setup)
    refs = ["#1", "2", made[2][:6], made[3]]
    waiting = tt_ok("assign", "bob", "after all", *[a for r in refs for a in ("--depends-on", r)], env=tt_env)
    assert waiting["state"] == "waiting"
    assert (waiting["depends_on"], waiting["depends_on_ids"]) == (["#1", "#2", "#3", "#4"], made)
    plain = tt("assign", "bob", "after one", "-d", "#1", env=tt_env)
    assert plain.stdout.startswith("task #6 for bob [normal] is waiting on #1"), plain.stdout
    one_error_line(tt("assign", "bob", "x", "--depends-on", "#77", env=tt_env), "tt: not_found: ")

    async def finish(town: Town) -> None:
        for task_id in made[:3]:
            await town.complete_task(task_id, "ok", by="bob")

    _in_town(redis_socket, town_name, finish)
    shown = tt("task", "show", "#5", env=tt_env)
    assert "waiting_on   #4" in shown.stdout and "depends_on   #1, #2, #3, #4" in shown.stdout, shown.stdout
    assert tt("task", "done", "4", "ok", env={**tt_env, "TINYTOWN_AGENT": "bob"}).returncode == 0
    assert _in_town(redis_socket, town_name, lambda town: town.get_task("#5")).state == TaskState.ASSIGNED


@pytest.mark.e2e
def test_tt_backlog_assign_hands_tasks_to_an_agent_or_to_each_idle_agent(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    async def setup(town: Town) -> None:
        await town.register_agent("bob")
        await town.register_agent("carol")
        for name in ("low", "urgent", "normal", "high"):
            await town.assign(name, priority=name)

    _in_town(redis_socket, town_name, setup)
    given = tt_ok("backlog", "assign", "bob", "--count", "2", env=tt_env)["assigned"]
    assert [(t["description"], t["assigned_to"], t["state"]) for t in given] == [
        ("urgent", "bob", "assigned"), ("high", "bob", "assigned")]
    idle = tt("backlog", "assign", "--idle", env=tt_env)
    assert idle.returncode == 0, idle.stderr
    assert idle.stdout.splitlines() == ["task #3 -> carol [normal]: normal"]
    empty = tt("backlog", "assign", "--idle", env=tt_env)
    assert empty.stdout.startswith("nothing handed out"), empty.stdout
    one_error_line(tt("backlog", "assign", env=tt_env), "tt: invalid: ")
    one_error_line(tt("backlog", "assign", "nobody", env=tt_env), "tt: not_found: ")
