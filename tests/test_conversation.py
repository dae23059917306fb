"""The conversation is visible: ``tt history`` shows what agents said (bodies, filters,
``--follow``), ``tt task show`` shows a task's thread and how it ended."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import LineReader, one_error_line, register, tt, tt_ok

from tinytown.errors import Invalid
from tinytown.town import Town


async def _talk(town: Town) -> dict[str, str]:
    """alice gets task #1, asks bob about it, bob answers, alice answers back and finishes;
    carol chats about something else."""
    for name in ("alice", "bob", "carol"):
        await town.register_agent(name)
    task = await town.assign("fix the flaky login test", agent="alice")
    query = await town.send("alice", "bob", "which fixture seeds the users?", kind="query",
                            task_id=task.id)
    answer = await town.send("bob", "alice", "conftest.py line 42", reply_to=query.message.id)
    thanks = await town.send("alice", "bob", "thanks, found it", reply_to=answer.message.id)
    await town.send("carol", "bob", "lunch at noon?")
    await town.complete_task("#1", "fixed: a race in the fixture", by="alice")
    return {"task": task.id, "query": query.message.id, "answer": answer.message.id,
            "thanks": thanks.message.id}


@pytest.mark.anyio
async def test_task_thread_holds_its_messages_and_the_replies_to_them_in_order(town: Town) -> None:
    ids = await _talk(town)
    thread = await town.conversation.thread("1")
    bodies = [(m.sender, m.to, m.body) for m in thread.messages]
    assert bodies == [
        ("conductor", "alice", "fix the flaky login test"),
        ("alice", "bob", "which fixture seeds the users?"),
        ("bob", "alice", "conftest.py line 42"),
        ("alice", "bob", "thanks, found it"),
        ("alice", "conductor", "fixed: a race in the fixture"),
    ]
    assert [m.id for m in thread.messages][1:4] == [ids["query"], ids["answer"], ids["thanks"]]
    assert (thread.task.state.value, thread.task.decided_by) == ("completed", "agent")


@pytest.mark.anyio
async def test_history_carries_message_bodies_and_filters_by_agent_task_and_kind(town: Town) -> None:
    await _talk(town)
    conversation = town.conversation
    everything = await conversation.history(100)
    said = [e.message.body for e in everything if e.type == "message.sent" and e.message]
    assert "lunch at noon?" in said and "conftest.py line 42" in said

    by_carol = await conversation.history(100, await conversation.filter(agent="carol"))
    assert [e.type for e in by_carol] == ["agent.registered", "message.sent"]
    assert by_carol[-1].message is not None and by_carol[-1].message.body == "lunch at noon?"

    about_task = await conversation.history(100, await conversation.filter(task="#1"))
    assert {e.type for e in about_task} >= {"task.created", "task.assigned", "task.completed"}
    assert all(e.task is not None and e.task.number == 1 for e in about_task)

    queries = await conversation.history(100, await conversation.filter(kind="query"))
    assert [e.message.body for e in queries if e.message] == ["which fixture seeds the users?"]
    newest_two = await conversation.history(2, await conversation.filter(kind="task"))
    # "task" is a message kind and a family of event types: both pass
    assert [(e.type, e.data.get("kind")) for e in newest_two] == [
        ("message.sent", "task"), ("task.completed", None)]
    completed = await conversation.history(10, await conversation.filter(kind="task.completed"))
    assert [e.task.result for e in completed if e.task] == ["fixed: a race in the fixture"]


@pytest.mark.anyio
async def test_a_history_kind_that_can_match_nothing_is_refused_naming_what_can(town: Town) -> None:
    """A typo (``querry``, ``tasks``) used to filter everything away and exit 0."""
    for typo in ("querry", "tasks", "bogus.failed", "task.", "task.fa iled"):
        with pytest.raises(Invalid, match=r"neither a message kind \(task, query, .*\), an event "
                                          r"family \(agent, message, task, token\)"):
            await town.conversation.filter(kind=typo)
    for kind in ("QUERY", "task_done", "agent", "token", "task.failed", "agent.order_done"):
        await town.conversation.filter(kind=kind)


@pytest.mark.e2e
def test_tt_history_shows_bodies_in_short_lines_filters_and_follows(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "alice", "bob")
    tt_ok("assign", "alice", "fix the flaky login test", env=tt_env)
    long_body = "which fixture seeds the users " + "and the sessions " * 12
    tt_ok("send", "bob", long_body, "--kind", "query", "--from", "alice", env=tt_env)
    tt_ok("send", "alice", "lunch?", "--from", "bob", env=tt_env)

    narrow = {**tt_env, "COLUMNS": "60"}
    shown = tt("history", env=narrow)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 60 for line in lines), lines
    assert "=" not in shown.stdout  # no key=uuid dumps
    assert any("conductor created task #1" in line for line in lines), lines
    assert any("alice → bob  query: which fixture" in line for line in lines), lines
    assert "sessions" in lines[[i for i, ln in enumerate(lines) if "query:" in ln][0] + 1]
    assert any("bob → alice  info: lunch?" in line for line in lines)

    only_bob = tt("history", "--agent", "bob", "--kind", "info", env=tt_env).stdout.splitlines()
    assert len(only_bob) == 1 and only_bob[0].endswith("bob → alice  info: lunch?"), only_bob
    task_lines = tt("history", "--task", "#1", env=tt_env).stdout
    assert "fix the flaky login test" in task_lines and "lunch?" not in task_lines
    full = tt_ok("history", "--kind", "query", env=tt_env)["events"]
    assert [e["message"]["body"] for e in full] == [long_body]
    assert full[0]["data"]["from"] == "alice"
    one_error_line(tt("history", "--task", "#9", env=tt_env), "tt: not_found: ")
    one_error_line(tt("history", "--kind", "querry", env=tt_env), "tt: invalid: kind 'querry' is neither")

    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytown.cli.main", "history", "--follow", "-n", "1",
         "--agent", "alice"],
        env=tt_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        reader = LineReader(proc)
        assert reader.line(30).endswith("bob → alice  info: lunch?")  # the newest, then new ones
        tt_ok("send", "conductor", "not about alice", "--from", "bob", env=tt_env)
        tt_ok("send", "alice", "are you there?", "--kind", "query", env=tt_env)
        assert reader.line(30).endswith("conductor → alice  query: are you there?")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.e2e
def test_tt_task_show_prints_the_thread_and_how_the_task_ended(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "alice", "bob")
    task = tt_ok("assign", "alice", "fix the flaky login test", env=tt_env)
    alice = {**tt_env, "TINYTOWN_AGENT": "alice"}
    tt_ok("task", "done", "#1", "fixed: a race in the fixture", env=alice)

    shown = tt("task", "show", "1", env=tt_env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "thread (2 messages):" in out
    assert "conductor → alice  task #1: fix the flaky login test" in out
    assert "alice → conductor  task_done #1: fixed: a race in the fixture" in out
    assert "ended: completed" in out and "decided by agent" in out

    data = tt_ok("task", "show", task["id"][:6], env=tt_env)
    assert (data["id"], data["result"], data["decided_by"]) == (
        task["id"], "fixed: a race in the fixture", "agent")
    assert [m["kind"] for m in data["thread"]] == ["task", "task_done"]
    assert json.dumps(data)  # the record keys stay as `tt task show --json` printed them


@pytest.mark.e2e
def test_tt_tasks_shows_results_and_errors_and_tt_version_prints_the_version(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    from tinytown import __version__

    register(redis_socket, town_name, "alice")
    alice = {**tt_env, "TINYTOWN_AGENT": "alice"}
    tt_ok("assign", "alice", "first", env=tt_env)
    tt_ok("assign", "alice", "second", env=tt_env)
    tt_ok("task", "done", "#1", "all good", env=alice)
    tt_ok("task", "fail", "#2", "disk full", env=alice)
    rows = tt("tasks", env=tt_env).stdout.splitlines()
    assert rows[0].split()[-1] == "RESULT"
    assert rows[1].startswith("#2") and rows[1].endswith("disk full"), rows
    assert rows[2].startswith("#1") and rows[2].endswith("all good"), rows

    version = tt("--version", env=tt_env)
    assert (version.returncode, version.stdout) == (0, f"tinytown {__version__}\n")
