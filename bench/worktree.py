"""What a worktree costs a round, on a repository of 10k files.

Before a worktree agent's round, the runner puts the task's branch in the agent's worktree
(:meth:`tinytown.worktrees.Worktrees.start_task`: commit leftovers, create ``tt/NAME/N`` at
the checkout's HEAD, check it out, record it on the task); after it, it commits what the
round left (:meth:`~tinytown.worktrees.Worktrees.finish_round`).  Goal: ≤ 150 ms added to a
round.  The floor, measured in the same run, is one ``git status`` of the same worktree (the
least any tool that looks at a 10k-file checkout pays).  The worktree itself is made once,
at spawn; its cost is printed too.

    python bench/worktree.py [--files 10000] [-n 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from tinytown.redis_server import ManagedRedis
from tinytown.town import Town


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=600)


def make_repository(root: Path, files: int) -> None:
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "bench@example.com")
    git(root, "config", "user.name", "Bench")
    for i in range(files):
        folder = root / "src" / f"pkg{i // 500}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"VALUE_{i} = {i}\n")
    (root / ".gitignore").write_text(".tt/\n")
    (root / "tinytown.toml").write_text('name = "bench"\n')
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a big repository")


def timed_ms(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ttwt") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        print(f"making a repository of {args.files} files …", file=sys.stderr)
        make_repository(root, args.files)
        server = ManagedRedis(root / ".tt")
        server.ensure_running()
        os.environ["REDIS_URL"] = f"unix://{server.connect_path()}"
        try:
            town = await Town.open(root)
            await town.ensure_conductor()
            await town.register_agent("bench", worktree=True)
            spawn_ms = timed_ms(lambda: town.worktrees._prepare("bench"))
            where = town.worktrees.path("bench")
            floor, start, finish = [], [], []
            for i in range(args.n):
                floor.append(timed_ms(lambda: git(where, "status", "--porcelain")))
                task = await town.assign(f"change {i}", agent="bench")
                t0 = time.perf_counter()
                await town.worktrees.start_task("bench", task)
                start.append((time.perf_counter() - t0) * 1000)
                (where / "src" / "pkg0" / f"new{i}.py").write_text("x = 1\n")  # the round's edit
                t0 = time.perf_counter()
                await town.worktrees.finish_round("bench", [task.id])
                finish.append((time.perf_counter() - t0) * 1000)
            await town.close()
        finally:
            server.stop()
    f, s, e = statistics.median(floor), statistics.median(start), statistics.median(finish)
    print(f"worktree cost on {args.files} files, n={args.n}, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'step':<44} {'median':>9} {'ratio':>7}")
    print(f"{'floor: git status of the worktree':<44} {f:7.1f}ms {1:6.2f}x")
    print(f"{'branch for a new task (before the round)':<44} {s:7.1f}ms {s / f:6.2f}x")
    print(f"{'commit + diff stat (after the round)':<44} {e:7.1f}ms {e / f:6.2f}x")
    print(f"{'added to a round (both)':<44} {s + e:7.1f}ms {(s + e) / f:6.2f}x   goal ≤ 150 ms")
    print(f"{'the worktree itself, once at spawn':<44} {spawn_ms:7.1f}ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("-n", type=int, default=15)
    anyio.run(main, parser.parse_args())
