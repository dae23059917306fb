"""A git worktree per agent and a branch per task, with real git, real runners and `tt`.

The agents run a tiny preset (``editor``) that does what its task says to files in its
current directory — ``write FILE: TEXT`` appends a line — and exits 0 (it cannot report:
its exit code completes the task).  ``partial`` writes a file and then hangs, to be killed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from runner_support import open_spawn_town, round_done, task_settled, wait_for_line

from tinytown.errors import Invalid
from tinytown.models import TaskState
from tinytown.processes import signal_process, wait_exit
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PY = sys.executable
EDITOR = (
    "import os, re, sys\n"
    "for name, text in re.findall(r'^write (\\S+): (.*)$', sys.stdin.read(), re.M):\n"
    "    open(name, 'a').write(text + '\\n')\n"
    "print('edited in', os.getcwd())\n"
)
GIT_DIR = (  # what {git_common_dir} said, and whether git in the worktree agrees
    "import os, subprocess, sys\n"
    "sys.stdin.read()\n"
    "told = sys.argv[1]\n"
    "found = subprocess.run(['git', 'rev-parse', '--git-common-dir'], capture_output=True, text=True,\n"
    "                       check=True).stdout.strip()\n"
    "same = os.path.isdir(told) and os.path.samefile(told, os.path.abspath(found))\n"
    "print('git dir', told, 'same' if same else 'but git says ' + found)\n"
    "sys.exit(0 if same else 1)\n"
)
PARTIAL = (
    "import os, sys, time\n"
    "sys.stdin.read(); open('partial.txt', 'w').write('half done\\n')\n"
    "print('pid', os.getpid(), flush=True); time.sleep(600)\n"
)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                          timeout=60).stdout  # fmt: skip


def make_repository(root: Path, git_dir: Path | None = None) -> None:
    """The town directory as a git repository with one commit (and .tt/ ignored); its git
    directory ``git_dir`` (``git init --separate-git-dir``) when given."""
    git(root, "init", "-q", "-b", "main", *(["--separate-git-dir", str(git_dir)] if git_dir else []))
    git(root, "config", "user.email", "dev@example.com")
    git(root, "config", "user.name", "Dev")
    (root / ".gitignore").write_text(".tt/\ntinytown.toml\n")  # the tests' presets are added to it
    (root / "notes.txt").write_text("hello\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    toml = root / "tinytown.toml"
    presets = {"editor": [PY, "-c", EDITOR], "gitdir": [PY, "-c", GIT_DIR, "{git_common_dir}"]}
    toml.write_text(toml.read_text() + "".join(
        f"\n[agent_clis.{name}]\ncommand = {json.dumps(command)}\nreports = false\n"
        for name, command in presets.items()
    ) + f"\n[agent_clis.partial]\ncommand = {json.dumps([PY, '-c', PARTIAL])}\n")


def tt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "tinytown.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


async def finish(town: Town, description: str, agent: str) -> str:
    """Assign, and wait until the task is completed and its round has ended (its work is
    committed by then, also when an agent reported the task before its round ended)."""
    after = await town.channel.last_event_id()
    task = await town.assign(description, agent=agent)
    await round_done(town, agent, after, timeout_s=90)
    done = await town.get_task(task.id)
    assert done.state == TaskState.COMPLETED, (done.state, done.error)
    return task.id


async def test_two_agents_editing_one_file_land_on_two_branches_and_the_second_merge_conflicts_cleanly(
    tt_env: dict[str, str],
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    make_repository(root)
    async with open_spawn_town(tt_env) as town:
        for name in ("alice", "bob"):
            agent = await town.spawn_agent(name, cli="editor", worktree=True)
            assert agent.worktree and (root / ".tt" / "worktrees" / name / ".git").exists()
        async with anyio.create_task_group() as tg:  # both at once
            tg.start_soon(finish, town, "write notes.txt: from alice", "alice")
            tg.start_soon(finish, town, "write notes.txt: from bob", "bob")
        numbered = [await town.get_task(await town.resolve_task(f"#{n}")) for n in (1, 2)]
        tasks = {task.assignee: task for task in numbered}
        first, second = tasks["alice"], tasks["bob"]
        for task, name in ((first, "alice"), (second, "bob")):
            assert task.branch == f"tt/{name}/{task.number}"
            assert task.base == git(root, "rev-parse", "main").strip()
            assert task.diffstat == {"files": 1, "insertions": 1, "deletions": 0}
            assert git(root, "show", f"{task.branch}:notes.txt") == f"hello\nfrom {name}\n"
        # the main checkout was never touched
        assert (root / "notes.txt").read_text() == "hello\n"
        assert git(root, "status", "--porcelain", "--untracked-files=no") == ""

    review = tt(tt_env, "review", f"#{first.number}")
    assert review.returncode == 0, review.stderr
    assert "notes.txt | 1 +" in review.stdout and "+from alice" in review.stdout
    shown = json.loads(tt(tt_env, "review", f"#{second.number}", "--json").stdout)
    assert "+from bob" in shown["diff"] and shown["task"]["branch"] == second.branch

    merged = tt(tt_env, "merge", f"#{first.number}")
    assert merged.returncode == 0, merged.stderr
    assert (root / "notes.txt").read_text() == "hello\nfrom alice\n"
    head = git(root, "rev-parse", "HEAD")
    clash = tt(tt_env, "merge", f"#{second.number}")
    assert clash.returncode == 1 and "conflicts in notes.txt" in clash.stderr, clash.stderr
    assert (root / "notes.txt").read_text() == "hello\nfrom alice\n"  # as it was
    assert git(root, "rev-parse", "HEAD") == head
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (root / ".git" / "MERGE_HEAD").exists()
    shown = json.loads(tt(tt_env, "task", "show", f"#{first.number}", "--json").stdout)
    assert (shown["merged_by"], shown["merged_into"], shown["branch"]) == ("conductor", "main", first.branch)

    gone = tt(tt_env, "discard", f"#{second.number}")
    assert gone.returncode == 0, gone.stderr
    assert git(root, "branch", "--list", second.branch or "") == ""


async def test_a_dependent_task_starts_from_its_dependencys_branch(tt_env: dict[str, str]) -> None:
    make_repository(Path(tt_env["TINYTOWN_TOWN"]))
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("carol", cli="editor", worktree=True)
        await town.spawn_agent("dave", cli="editor", worktree=True)
        after = await town.channel.last_event_id()
        first = await town.assign("write a.txt: one", agent="carol")
        then = await town.assign("write b.txt: two", agent="dave", depends_on=[first.id])
        done = await task_settled(town, then.id, after, timeout_s=90)
        assert done.state == TaskState.COMPLETED, done.error
        first = await town.get_task(first.id)
        assert done.base == first.head  # dave went on from carol's work
        assert git(Path(tt_env["TINYTOWN_TOWN"]), "show", f"{done.branch}:a.txt") == "one\n"


async def test_a_killed_rounds_partial_work_is_committed_on_its_branch_when_its_task_is_recovered(
    tt_env: dict[str, str],
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    make_repository(root)
    async with open_spawn_town(tt_env) as town:
        erin = await town.spawn_agent("erin", cli="partial", worktree=True)
        task = await town.assign("half of something", agent="erin")
        assert town.paths is not None
        wait_for_line(town.paths.logs / "erin.round-1.log", "pid ", timeout_s=60)
        assert erin.pid is not None
        signal_process(erin.pid, 9, group=True)  # the runner and its round, at once
        wait_exit(erin.pid, 30)
        report = await town.recover()
        assert task.id in [r["task_id"] for r in report.reclaimed]
        kept = await town.get_task(task.id)
        assert kept.state == TaskState.PENDING and kept.branch == f"tt/erin/{kept.number}"
        assert git(root, "show", f"{kept.branch}:partial.txt") == "half done\n"
        assert kept.diffstat == {"files": 1, "insertions": 1, "deletions": 0}
        assert (root / ".tt" / "worktrees" / "erin").is_dir()  # the worktree itself stays
        assert await town.prune() == ["erin"]  # now it goes; its branch stays
        assert not (root / ".tt" / "worktrees" / "erin").exists()
        assert git(root, "show", f"{kept.branch}:partial.txt") == "half done\n"
        dropped = await town.worktrees.discard(f"#{kept.number}")
        assert dropped.discarded and git(root, "branch", "--list", kept.branch or "") == ""


async def test_merge_refuses_a_dirty_checkout_and_changes_nothing(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    make_repository(root)
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("fay", cli="editor", worktree=True)
        task_id = await finish(town, "write notes.txt: from fay", "fay")
        number = (await town.get_task(task_id)).number
    (root / "notes.txt").write_text("my own edit\n")
    refused = tt(tt_env, "merge", f"#{number}")
    assert refused.returncode == 1 and "uncommitted changes" in refused.stderr, refused.stderr
    assert (root / "notes.txt").read_text() == "my own edit\n"


async def test_a_merged_or_discarded_task_is_refused_by_merge_and_discard_with_what_happened_to_it(
    tt_env: dict[str, str],
) -> None:
    """Merging twice would record another merge commit, and a discarded task's branch is
    gone: both are refused naming what happened, not with git's text (a deleted branch
    used to come back as "conflicts in merge: … not something we can merge")."""
    root = Path(tt_env["TINYTOWN_TOWN"])
    make_repository(root)
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("kit", cli="editor", worktree=True)
        kept = (await town.get_task(await finish(town, "write a.txt: kept", "kit"))).number
        dropped = (await town.get_task(await finish(town, "write b.txt: dropped", "kit"))).number
    assert "1 file, +1 -0" in tt(tt_env, "task", "show", f"#{kept}").stdout  # not "1 files"
    assert tt(tt_env, "merge", f"#{kept}").returncode == 0
    head = git(root, "rev-parse", "HEAD").strip()
    again = tt(tt_env, "merge", f"#{kept}")
    assert again.returncode == 1, again.stdout
    assert again.stderr == (f"tt: conflict: task #{kept} was merged into main already "
                            f"(merge commit {head[:10]}); nothing to do\n")
    assert json.loads(tt(tt_env, "task", "show", f"#{kept}", "--json").stdout)["merge_commit"] == head

    assert tt(tt_env, "discard", f"#{dropped}").returncode == 0
    for action in ("merge", "discard", "review"):
        refused = tt(tt_env, action, f"#{dropped}")
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr == (f"tt: conflict: cannot {action} task #{dropped}: its change was "
                                  f"discarded and its branch tt/kit/{dropped} deleted\n")
    assert git(root, "rev-parse", "HEAD").strip() == head


async def test_merging_a_task_whose_branch_changed_nothing_is_refused_and_makes_no_commit(
    tt_env: dict[str, str],
) -> None:
    """A task that changed no file has a branch at its base: merging it would only add an
    empty merge commit, so it is refused (plain and ``--squash``) and the checkout stays."""
    root = Path(tt_env["TINYTOWN_TOWN"])
    make_repository(root)
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("lou", cli="editor", worktree=True)
        number = (await town.get_task(await finish(town, "look around, change nothing", "lou"))).number
    head = git(root, "rev-parse", "HEAD").strip()
    for squash in ([], ["--squash"]):
        refused = tt(tt_env, "merge", f"#{number}", *squash)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr == (f"tt: conflict: task #{number}'s branch tt/lou/{number} has no "
                                  f"change that main lacks; nothing to merge (`tt discard #{number}` "
                                  "drops the branch)\n"), refused.stderr
    assert git(root, "rev-parse", "HEAD").strip() == head
    assert json.loads(tt(tt_env, "task", "show", f"#{number}", "--json").stdout)["merged_into"] is None


async def test_a_worktree_agent_in_a_town_outside_git_is_refused_and_nothing_is_registered(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        with pytest.raises(Invalid, match="git repository"):
            await town.spawn_agent("gus", cli="echo", worktree=True)
        assert "gus" not in [a.name for a in await town.list_agents()]
    done = tt(tt_env, "spawn", "gus", "--cli", "echo", "--worktree")
    assert done.returncode == 1 and "git repository" in done.stderr


def test_worktrees_and_their_branches_survive_tt_down_and_up(tmp_path: Path) -> None:
    from conftest import clean_env

    env = clean_env()
    env["TINYTOWN_TOWN"] = str(tmp_path)
    (tmp_path / "tinytown.toml").write_text('name = "wt-down-up"\n')
    make_repository(tmp_path)
    try:
        spawned = tt(env, "spawn", "hal", "--cli", "scripted", "--worktree", "--max-rounds", "1")
        assert spawned.returncode == 0, spawned.stderr
        assert tt(env, "assign", "hal", "2 + 3").returncode == 0
        waited = tt(env, "wait", "hal", "--timeout", "110")  # its one round, then it stops
        assert waited.returncode == 0, waited.stdout + waited.stderr
        task = json.loads(tt(env, "task", "show", "#1", "--json").stdout)
        assert task["state"] == "completed" and task["head"], task
        assert task["branch"] == "tt/hal/1", task
        down = tt(env, "down", "--all")
        assert down.returncode == 0, down.stderr
        assert tt(env, "up").returncode == 0
        assert (tmp_path / ".tt" / "worktrees" / "hal" / ".git").exists()
        assert "tt/hal/1" in git(tmp_path, "branch", "--list", "tt/*")
        review = tt(env, "review", "#1")
        assert review.returncode == 0 and "tt/hal/1" in review.stdout, review.stderr
    finally:
        tt(env, "down", "--all")


def test_a_town_in_a_subfolder_of_a_repository_spawns_a_worktree_agent_whose_change_merges(
    tt_env: dict[str, str],
) -> None:
    """The town is ``repo/app`` (a monorepo's folder): the worktree is of the whole
    repository, the round works in the worktree's ``app`` (what the town folder is there),
    and ``tt merge`` lands the change in the town folder of the checkout."""
    from runner_support import kill_leftover_runners

    repo = Path(tt_env["TINYTOWN_TOWN"])
    make_repository(repo)
    root = repo / "app"
    root.mkdir()
    (repo / "tinytown.toml").rename(root / "tinytown.toml")  # the town is the folder
    (root / "notes.txt").write_text("app notes\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the app folder")
    env = {**tt_env, "TINYTOWN_TOWN": str(root)}
    try:
        spawned = tt(env, "spawn", "ivy", "--cli", "scripted", "--worktree", "--max-rounds", "1")
        assert spawned.returncode == 0, spawned.stderr
        assert (root / ".tt" / "worktrees" / "ivy" / ".git").exists()
        assert tt(env, "assign", "ivy", "write notes.txt: from ivy").returncode == 0
        waited = tt(env, "wait", "ivy", "--timeout", "110")  # its one round, then it stops
        logs = "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted((root / ".tt" / "logs").glob("ivy*")))
        assert waited.returncode == 0, waited.stdout + waited.stderr + logs
        task = json.loads(tt(env, "task", "show", "#1", "--json").stdout)
        assert task["state"] == "completed" and task["branch"] == "tt/ivy/1", task
        assert task["base"] == git(repo, "rev-parse", "main").strip()
        assert task["diffstat"] == {"files": 1, "insertions": 1, "deletions": 0}, (task, logs)
        assert git(repo, "show", "tt/ivy/1:app/notes.txt") == "app notes\nfrom ivy\n"
        assert (root / "notes.txt").read_text() == "app notes\n"  # the checkout is untouched

        review = tt(env, "review", "#1")
        assert review.returncode == 0, review.stderr
        assert "app/notes.txt | 1 +" in review.stdout, review.stdout
        merged = tt(env, "merge", "#1")
        assert merged.returncode == 0, merged.stderr
        assert (root / "notes.txt").read_text() == "app notes\nfrom ivy\n"
        assert not (repo / "notes.txt").read_text().endswith("from ivy\n")
        assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
        shown = json.loads(tt(env, "task", "show", "#1", "--json").stdout)
        assert (shown["merged_by"], shown["merged_into"]) == ("conductor", "main"), shown
        assert shown["merge_commit"] == git(repo, "rev-parse", "HEAD").strip()
    finally:
        kill_leftover_runners(root)


async def test_a_round_in_a_subfolder_towns_worktree_is_given_the_repositorys_separate_git_dir(
    tt_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``{git_common_dir}`` (what the codex preset lets its sandbox write, to commit) is the
    directory git itself uses from the agent's worktree: here neither ``app/.git`` nor
    ``repo/.git`` (a file), but the separate git dir the repository was made with."""
    repo = Path(tt_env["TINYTOWN_TOWN"])
    store = tmp_path_factory.mktemp("store") / "repo.git"
    make_repository(repo, git_dir=store)
    root = repo / "app"
    root.mkdir()
    (repo / "tinytown.toml").rename(root / "tinytown.toml")
    async with open_spawn_town({**tt_env, "TINYTOWN_TOWN": str(root)}) as town:
        await town.spawn_agent("jo", cli="gitdir", worktree=True)
        after = await town.channel.last_event_id()
        task = await town.assign("where is git?", agent="jo")
        done = await task_settled(town, task.id, after, timeout_s=90)
        assert done.state == TaskState.COMPLETED, (done.error, done.result)
        assert f"git dir {store.resolve()} same" in (done.result or ""), done.result
