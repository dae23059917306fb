"""``.tt/`` is private to the user: every folder 0700 and every file 0600 (the managed Redis's
AOF, pid file and log, the runner and MCP logs, the round prompts and logs, the generated MCP
configs, the locks), whatever the user's umask; while the files an agent CLI writes in the
repository keep the user's umask."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from runner_support import open_spawn_town, round_done

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis, pytest.mark.e2e]


def tt(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYTOWN_", "REDIS_URL"))}
    return subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env, umask=umask,
                          capture_output=True, text=True, timeout=180, check=False)


def open_to_others(runtime: Path) -> list[str]:
    """Everything under ``runtime`` (itself included) that group or others may access."""
    found = []
    for path in [runtime, *runtime.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        wanted = 0o700 if stat.S_ISDIR(info.st_mode) or stat.S_ISSOCK(info.st_mode) else 0o600
        if stat.S_IMODE(info.st_mode) & ~wanted & 0o777 or stat.S_IMODE(info.st_mode) & 0o077:
            found.append(f"{oct(stat.S_IMODE(info.st_mode))} {path.relative_to(runtime.parent)}")
    return found


def test_after_a_demo_run_everything_under_tt_is_private_even_with_umask_022() -> None:
    demo = tt("demo", "--keep", "--tasks", "2")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    kept = re.search(r"kept the demo town in (\S+) ", demo.stdout)
    assert kept, demo.stdout
    root = Path(kept.group(1))
    try:
        runtime = root / ".tt"
        names = {p.name for p in runtime.rglob("*")}
        # what must be there for the check to mean something: Redis's files, every kind of log
        assert {"redis.log", "mcp", "logs", "run"} <= names, sorted(names)
        assert any(n.endswith(".aof") for n in names) and any(n.endswith(".runner.log") for n in names)
        assert any(n.startswith("mcp-") for n in names) and any(".round-" in n for n in names)
        assert open_to_others(runtime) == []
        # files made later (the managed Redis started again, more log lines) are private too
        assert tt("--town", str(root), "status").returncode == 0
        assert (runtime / "redis.pid").exists()
        assert open_to_others(runtime) == []
    finally:
        tt("--town", str(root), "down")
        shutil.rmtree(root, ignore_errors=True)


def test_a_town_whose_tt_folder_was_left_open_is_made_private_on_next_use(tmp_path: Path) -> None:
    root = tmp_path / "old"
    assert tt("--town", str(root), "init").returncode == 0
    runtime = root / ".tt"
    (runtime / "logs" / "old.log").write_text("from an older version\n")
    for path in (runtime, runtime / "logs"):
        path.chmod(0o755)
    (runtime / "logs" / "old.log").chmod(0o644)
    try:
        assert tt("--town", str(root), "status").returncode == 0
        assert open_to_others(runtime) == []
        assert stat.S_IMODE((root / "tinytown.toml").stat().st_mode) == 0o644  # the user's file
    finally:
        tt("--town", str(root), "down")


async def test_the_agent_cli_writes_the_repository_with_the_users_umask(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    with (root / "tinytown.toml").open("a") as f:  # open_spawn_town adds its presets and trusts
        f.write(f'\n[agent_clis.writer]\ncommand = ["{sys.executable}", "-c", '
                '"open(\'written-by-agent.txt\', \'w\').write(\'hi\')"]\n')
    old = os.umask(0o022)  # the runner inherits it from here, as from a shell
    try:
        async with open_spawn_town(tt_env) as town:
            await town.spawn_agent("wendy", cli="writer")
            after = await town.channel.last_event_id()
            await town.assign("write it", agent="wendy")
            await round_done(town, "wendy", after)
            await town.kill_agent("wendy")
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "written-by-agent.txt").stat().st_mode) == 0o644
    assert open_to_others(root / ".tt") == []
