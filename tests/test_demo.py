"""``tt demo`` end to end, as the README's first command runs it: a subprocess on the embedded
managed Redis (no REDIS_URL), which must finish, report, and leave nothing behind."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env
from servers import path_without_servers

pytestmark = pytest.mark.e2e


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_tt_demo_completes_its_tasks_through_mcp_and_cleans_up(tmp_path: Path) -> None:
    env = clean_env()
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # the demo must ignore it: its own managed Redis
    env["PATH"] = path_without_servers(tmp_path)  # the embedded Valkey needs none on PATH
    assert shutil.which("redis-server", path=env["PATH"]) is None
    assert shutil.which("valkey-server", path=env["PATH"]) is None
    done = subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", "demo"],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    match = re.search(r"town demo in (\S+), Redis managed unix://\S+ \(Valkey 9\.", out)
    assert match, out
    root = match.group(1)
    assert "6 of 6 tasks completed by 2 agents talking MCP over stdio" in out
    assert out.count("completed") >= 6
    assert "2 + 3 * 4 = 14" in out  # a result the scripted agent reported through MCP
    for name in ("alice", "bob"):
        assert re.search(rf"^{name}\s+stopped\s+scripted\s+\d+\s+3$", out, re.MULTILINE), out
    assert "→ alice: info message" in out or "→ bob: info message" in out  # agents talked
    assert not Path(root).exists()
    assert processes_mentioning(root) == []  # no runner, MCP server or redis-server left


def test_tt_demo_interrupted_by_ctrl_c_still_cleans_up() -> None:
    env = clean_env()
    demo = subprocess.Popen(
        [sys.executable, "-m", "tinytown.cli.main", "demo"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        match = re.search(r"town demo in (\S+), Redis managed", first)
        assert match, first
        root = match.group(1)
        while "joined" not in demo.stdout.readline():  # agents are being spawned: interrupt now
            assert demo.poll() is None
        demo.send_signal(signal.SIGINT)
        _out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, err
    assert "demo interrupted; cleaned up" in err
    assert not Path(root).exists()
    assert processes_mentioning(root) == []


def test_tt_demo_worktree_has_two_agents_change_files_in_parallel_and_merges_both(tmp_path: Path) -> None:
    env = clean_env()
    env["PATH"] = path_without_servers(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", "demo", "--worktree", "--keep"],
        check=False, env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    root = Path(re.search(r"town demo in (\S+),", out).group(1))  # type: ignore[union-attr]
    try:
        assert re.search(r"merged #1 \(tt/alice/1, 1 file, \+1 -0\) into \S+", out), out
        assert re.search(r"merged #2 \(tt/bob/2, 1 file, \+1 -0\) into \S+", out), out
        assert "2 of 2 tasks completed" in out
        assert (root / "docs" / "alice.md").read_text() == "Alice was here, on her own branch.\n"
        assert (root / "docs" / "bob.md").read_text() == "Bob was here, on his own branch.\n"
        log = subprocess.run(["git", "log", "--oneline"], cwd=root, capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        assert "tinytown: task #1" in log and "tinytown: merge task #2" in log
    finally:
        shutil.rmtree(root, ignore_errors=True)
