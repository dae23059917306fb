"""A git worktree per agent, a branch per task: agents' edits never mix.

An agent spawned with ``--worktree`` runs its rounds in ``.tt/worktrees/NAME``, a worktree
of the town's repository.  Each task it works on gets the branch ``tt/NAME/N`` (N the
task's number), started at delivery from the town checkout's current ``HEAD`` — or from the
branch of the task it depends on, when that task has one.  When a round ends, whatever the
round left uncommitted is committed on the task's branch ("tinytown: task #N — …"), and
the task record carries ``branch``, ``base``, ``head`` and a diff stat.  The conductor reads
the change (:meth:`Worktrees.review`), merges it into the checkout's current branch
(:meth:`Worktrees.merge`) or throws it away (:meth:`Worktrees.discard`).

The main checkout is never written by any of this except :meth:`Worktrees.merge`, which
refuses a dirty checkout and leaves it exactly as it was when the merge conflicts.

Real ``git`` through subprocesses (no library): it is what the user has and trusts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from tinytown.channel import Plan
from tinytown.errors import Conflict, Invalid, NotFound
from tinytown.models import Task

if TYPE_CHECKING:
    from tinytown.town import Town

GIT_TIMEOUT_S = 120.0
BRANCH_PREFIX = "tt"
_SHORTSTAT = re.compile(r"(\d+) files? changed(?:, (\d+) insertions?\(\+\))?(?:, (\d+) deletions?\(-\))?")


@dataclass(frozen=True)
class Change:
    """What a task's branch holds: ``git diff base...head``."""

    task: Task
    stat: str
    diff: str


def git(cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run ``git ARGS`` in ``cwd``; its stdout.  A failure is ``Invalid`` with git's words."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
        env={**os.environ, **(env or {}), "GIT_TERMINAL_PROMPT": "0"}, check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        words = (done.stderr or done.stdout).strip().splitlines()
        raise Invalid(f"git {args[0]} failed: {words[-1] if words else f'exit {done.returncode}'}")
    return done.stdout


def common_git_dir(where: Path) -> Path | None:
    """The git directory that ``where``'s repository shares with all its worktrees (objects,
    refs, each worktree's index): ``git rev-parse --git-common-dir``, made absolute.  It is
    ``TOP/.git`` only in the plain case: not from a worktree's own ``.git`` file, and not for
    a repository made with ``--separate-git-dir``.  ``None`` outside a repository (or without
    git)."""
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=where, capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, check=False)  # fmt: skip
    except OSError:  # ``where`` is gone
        return None
    found = done.stdout.strip()
    if done.returncode != 0 or not found:
        return None
    return (where / found).resolve()  # git answers relative to ``where`` ("." , ".git") or absolute


def branch_name(agent: str, number: int) -> str:
    return f"{BRANCH_PREFIX}/{agent}/{number}"


def parse_shortstat(text: str) -> dict[str, int]:
    """``git diff --shortstat`` → ``{"files", "insertions", "deletions"}`` (zeros if empty)."""
    match = _SHORTSTAT.search(text)
    if not match:
        return {"files": 0, "insertions": 0, "deletions": 0}
    files, added, removed = (int(g) if g else 0 for g in match.groups())
    return {"files": files, "insertions": added, "deletions": removed}


class Worktrees:
    """The worktree operations of one town (``town.worktrees``)."""

    def __init__(self, town: Town) -> None:
        self.town = town
        self._repository: Path | None = None
        self._prefix = ""  # the town folder inside the repository ("" at its top), e.g. "app/"

    # ----------------------------------------------------------------- where

    def repository(self) -> Path:
        """The top of the git repository the town lives in (looked up once).

        Raises:
            Invalid: the town is not inside a git repository (or has no commit yet).
        """
        if self._repository is None:
            self._repository, self._prefix = self._find_repository()
        return self._repository

    def _find_repository(self) -> tuple[Path, str]:
        root = self.town.root
        if root is None:
            raise Invalid("worktrees need a town directory (tinytown.toml), not only a Redis URL")
        if shutil.which("git") is None:
            raise Invalid("worktrees need git on PATH")
        done = subprocess.run(["git", "rev-parse", "--show-toplevel", "--show-prefix"], cwd=root,
                              capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)  # fmt: skip
        if done.returncode != 0:
            raise Invalid(f"--worktree needs the town to be in a git repository; {root} is not "
                          "(git init, and commit once)")
        top, _, prefix = done.stdout.partition("\n")
        if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=top, capture_output=True,
                          timeout=GIT_TIMEOUT_S, check=False).returncode != 0:  # fmt: skip
            raise Invalid(f"--worktree needs a first commit in {top} (a branch starts from one)")
        return Path(top), prefix.strip()

    def path(self, agent: str) -> Path:
        paths = self.town.paths
        if paths is None:
            raise Invalid("worktrees need a town directory (tinytown.toml), not only a Redis URL")
        return paths.runtime / "worktrees" / agent

    def workdir(self, agent: str) -> Path:
        """Where the agent's rounds run: the town's folder in its worktree (the worktree's
        top when the town is the repository's top; ``app`` in it for a town ``repo/app``)."""
        self.repository()
        return self.path(agent) / self._prefix if self._prefix else self.path(agent)

    # ----------------------------------------------------------------- agents

    async def prepare(self, agent: str) -> Path:
        """The agent's worktree, made if missing (detached at the checkout's ``HEAD``); the
        folder its rounds run in (:meth:`workdir`, made if the commit has no such folder)."""
        await anyio.to_thread.run_sync(self._prepare, agent)
        workdir = self.workdir(agent)
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir

    def _prepare(self, agent: str) -> Path:
        repo = self.repository()
        where = self.path(agent)
        if (where / ".git").exists():
            return where
        where.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "prune")  # a folder deleted by hand leaves a stale entry
        git(repo, "worktree", "add", "--detach", "--quiet", str(where), "HEAD")
        return where

    async def remove(self, agent: str, *, force: bool = False) -> bool:
        """Delete the agent's worktree (its branches stay).  Refuses uncommitted changes
        unless ``force``.  True if there was one."""
        return await anyio.to_thread.run_sync(self._remove, agent, force)

    def _remove(self, agent: str, force: bool) -> bool:
        where = self.path(agent)
        if not where.exists():
            return False
        repo = self.repository()
        if not force and git(where, "status", "--porcelain", check=False).strip():
            raise Conflict(f"the worktree of {agent} has uncommitted changes ({where}); "
                           "commit them or pass --force")
        git(repo, "worktree", "remove", *(["--force"] if force else []), str(where))
        return True

    # ----------------------------------------------------------------- tasks

    async def start_task(self, agent: str, task: Task) -> Task:
        """Check out the task's branch in the agent's worktree (created from the checkout's
        ``HEAD``, or from the branch of a dependency that has one) and record ``branch`` and
        ``base`` on the task.  Work left uncommitted by an earlier round is first committed
        where it was made."""
        fields = await anyio.to_thread.run_sync(self._start_task, agent, task, await self._base_of(task))
        return await self._record(task, fields)

    async def _base_of(self, task: Task) -> str | None:
        """The branch of the first dependency that has one (``None``: the checkout's HEAD)."""
        for dep_id in task.depends_on:
            dep = await self.town.get_task(dep_id)
            if dep.branch:
                return dep.branch
        return None

    def _start_task(self, agent: str, task: Task, dependency_branch: str | None) -> dict[str, Any]:
        assert task.number is not None
        where = self._prepare(agent)
        self._commit_leftovers(agent, where)
        branch = task.branch or branch_name(agent, task.number)
        fields: dict[str, Any] = {"branch": branch}
        if git(where, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip():
            git(where, "checkout", "--quiet", branch)  # a task that comes back goes on where it was
        else:
            start = dependency_branch or git(self.repository(), "rev-parse", "HEAD").strip()
            fields["base"] = fields["head"] = git(where, "rev-parse", start).strip()
            git(where, "checkout", "--quiet", "-b", branch, fields["base"])
        self.workdir(agent).mkdir(parents=True, exist_ok=True)  # that commit may have no such folder
        return fields

    async def finish_round(self, agent: str, task_ids: Sequence[str]) -> list[Task]:
        """Commit what the round left uncommitted on the branch it worked on, and record
        ``head`` and the diff stat on each task of that branch."""
        tasks = [await self.town.get_task(task_id) for task_id in task_ids]
        fields = await anyio.to_thread.run_sync(self._finish_round, agent, tasks)
        return [await self._record(task, fields[task.id]) for task in tasks if task.id in fields]

    def _finish_round(self, agent: str, tasks: list[Task]) -> dict[str, dict[str, Any]]:
        where = self.path(agent)
        if not (where / ".git").exists():
            return {}
        current = git(where, "branch", "--show-current", check=False).strip()
        out: dict[str, dict[str, Any]] = {}
        for task in tasks:
            if not task.branch or task.branch != current:
                continue
            self._commit(where, agent, f"tinytown: task #{task.number} — {_first_line(task.description)}")
            out[task.id] = self._state_of(where, task)
        return out

    async def commit_leftovers(self, agent: str, *, release: bool = False) -> Task | None:
        """Commit what a round that died (SIGKILL, a crash) left in the worktree, on the branch
        it was on, and record it on that branch's task: nothing is lost when its task is
        recovered or handed to someone else.  ``release``: the worktree then lets go of the
        branch (detached), so whoever gets the task next goes on from it."""
        where = self.path(agent)
        if not (where / ".git").exists():
            return None
        branch = await anyio.to_thread.run_sync(self._commit_leftovers, agent, where)
        task = await self._task_of_branch(branch)
        if task is not None and task.branch == branch:
            task = await self._record(task, await anyio.to_thread.run_sync(self._state_of, where, task))
        if release and branch:
            await anyio.to_thread.run_sync(lambda: git(where, "checkout", "--quiet", "--detach"))
        return task

    def _commit_leftovers(self, agent: str, where: Path) -> str:
        """The branch the worktree is on ('' if detached), its uncommitted work committed."""
        branch = git(where, "branch", "--show-current", check=False).strip()
        if branch:
            self._commit(where, agent, f"tinytown: work an interrupted round left on {branch}")
        return branch

    async def _task_of_branch(self, branch: str) -> Task | None:
        match = re.fullmatch(rf"{BRANCH_PREFIX}/[^/]+/(\d+)", branch)
        if not match:
            return None
        try:
            return await self.town.get_task(await self.town.resolve_task(f"#{match.group(1)}"))
        except NotFound:  # expired, or a branch made by hand: nothing to record
            return None

    def _commit(self, where: Path, agent: str, message: str) -> bool:
        """Commit everything the worktree holds that its branch does not (one scan of the
        files: ``add -A``; the index compared with HEAD is cheap)."""
        git(where, "add", "-A")
        if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=where, timeout=GIT_TIMEOUT_S,
                          check=False).returncode == 0:  # fmt: skip
            return False
        git(where, "commit", "--quiet", "--no-verify", "-m", message, env=_identity(where, agent))
        return True

    def _state_of(self, where: Path, task: Task) -> dict[str, Any]:
        head = git(where, "rev-parse", "HEAD").strip()
        if not task.base:
            return {"head": head}
        stat = git(where, "diff", "--shortstat", f"{task.base}...{head}")
        return {"head": head, "diffstat": parse_shortstat(stat)}

    # ----------------------------------------------------------------- review

    async def review(self, ref: str) -> Change:
        """The task's change: ``git diff --stat`` and the diff, ``base...head`` of its branch.

        Raises:
            NotFound: no such task.  Invalid: the task has no branch.  Conflict: its change
                was discarded (the branch is gone).
        """
        task = await self._task_with_branch(ref)
        self._refuse_discarded(task, "review")
        repo = await anyio.to_thread.run_sync(self.repository)
        span = f"{task.base}...{task.branch}"
        stat = await anyio.to_thread.run_sync(lambda: git(repo, "diff", "--stat", span))
        diff = await anyio.to_thread.run_sync(lambda: git(repo, "diff", span))
        return Change(task, stat, diff)

    async def merge(self, ref: str, *, squash: bool = False, by: str) -> Task:
        """Merge the task's branch into the checkout's current branch and record who merged
        it (``merged_by``, ``merged_into``, ``merge_commit``).

        Raises:
            Conflict: the checkout has uncommitted changes (nothing done), or the merge
                conflicts (aborted: the checkout is as it was; the message names the files),
                or the task was merged or discarded already, or its branch holds nothing
                the checkout's branch lacks.
        """
        task = await self._task_with_branch(ref)
        self._refuse_discarded(task, "merge")
        if task.merged_into:
            commit = (task.merge_commit or "")[:10]
            raise Conflict(f"task {task.ref} was merged into {task.merged_into} already (merge commit "
                           f"{commit}); nothing to do")
        fields = await anyio.to_thread.run_sync(self._merge, task, squash)
        fields["merged_by"] = by
        task = await self._record(task, fields)
        await self.town._event("task.merged", task_id=task.id, agent=by, branch=task.branch,
                               into=fields["merged_into"])
        return task

    def _merge(self, task: Task, squash: bool) -> dict[str, Any]:
        assert task.branch is not None
        repo = self.repository()
        if git(repo, "status", "--porcelain", "--untracked-files=no").strip():
            raise Conflict(f"the checkout {repo} has uncommitted changes; commit or stash them "
                           "first (nothing was merged)")
        into = git(repo, "branch", "--show-current").strip() or "HEAD"
        if git(repo, "rev-list", "--count", f"HEAD..{task.branch}").strip() == "0":
            raise Conflict(f"task {task.ref}'s branch {task.branch} has no change that {into} lacks; "
                           f"nothing to merge (`tt discard {task.ref}` drops the branch)")
        message = f"tinytown: merge task #{task.number} ({task.branch}) — {_first_line(task.description)}"
        args = ["merge", "--squash", task.branch] if squash else ["merge", "--no-ff", "-m", message,
                                                                   task.branch]
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False,
                              timeout=GIT_TIMEOUT_S, env={**os.environ, **_identity(repo, "tinytown")})
        if done.returncode != 0:
            files = git(repo, "diff", "--name-only", "--diff-filter=U", check=False).split()
            if squash:
                git(repo, "reset", "--hard", "--quiet", "HEAD", check=False)
            else:
                git(repo, "merge", "--abort", check=False)
            named = ", ".join(files) or (done.stderr or done.stdout).strip().splitlines()[-1]
            raise Conflict(f"merging {task.branch} into {into} conflicts in {named}; the merge "
                           "was aborted and the checkout is as it was")
        if squash:
            git(repo, "commit", "--quiet", "--no-verify", "-m", message, env=_identity(repo, "tinytown"))
        return {"merged_into": into, "merge_commit": git(repo, "rev-parse", "HEAD").strip()}

    async def discard(self, ref: str) -> Task:
        """Delete the task's branch (``discarded`` on the task); the agent's worktree goes too
        when the agent is gone.

        Raises:
            Conflict: the task's change was discarded already.
        """
        task = await self._task_with_branch(ref)
        self._refuse_discarded(task, "discard")
        await anyio.to_thread.run_sync(self._discard, task)
        assert task.branch is not None
        agent = task.branch.split("/")[1]
        try:
            await self.town.get_agent(agent)
        except NotFound:  # the agent is gone: its worktree has nothing left to do
            await self.remove(agent)
        return await self._record(task, {"discarded": True})

    def _discard(self, task: Task) -> None:
        assert task.branch is not None
        repo = self.repository()
        agent = task.branch.split("/")[1]
        where = self.path(agent)
        on_it = (where / ".git").exists() and git(where, "branch", "--show-current", check=False).strip()
        if on_it == task.branch:  # a branch checked out in a worktree cannot be deleted
            git(where, "checkout", "--quiet", "--detach")
        git(repo, "branch", "-D", task.branch)

    async def _task_with_branch(self, ref: str) -> Task:
        task = await self.town.get_task(await self.town.resolve_task(ref))
        if not task.branch:
            raise Invalid(f"task {task.ref} has no branch: its agent did not work in a worktree")
        return task

    @staticmethod
    def _refuse_discarded(task: Task, action: str) -> None:
        """A discarded task's branch is deleted: say so, instead of git's error about it."""
        if task.discarded:
            raise Conflict(f"cannot {action} task {task.ref}: its change was discarded and its branch "
                           f"{task.branch} deleted")

    async def _record(self, task: Task, fields: dict[str, Any]) -> Task:
        """Write ``fields`` onto the task record (only those) and return the task as read."""
        if not fields:
            return await self.town.get_task(task.id)
        changed = Task.model_validate({**task.model_dump(), **fields}).to_redis()
        plan = Plan()
        plan.hset.append([self.town._k(self.town.keys.task(task.id)),
                          {k: v for k, v in changed.items() if k in fields}])
        await self.town.channel.apply(plan)
        return await self.town.get_task(task.id)


def _first_line(text: str, limit: int = 72) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _identity(where: Path, agent: str) -> dict[str, str]:
    """Commit as the user when git knows who that is, else as the agent."""
    if git(where, "config", "user.email", check=False).strip():
        return {}
    return {"GIT_AUTHOR_NAME": agent, "GIT_AUTHOR_EMAIL": f"{agent}@tinytown.invalid",
            "GIT_COMMITTER_NAME": agent, "GIT_COMMITTER_EMAIL": f"{agent}@tinytown.invalid"}
