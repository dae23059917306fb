"""aider, released (``aider-chat`` from PyPI, pinned in agent_clis.py, in a venv of its own),
end to end against a scripted OpenAI chat completions API on 127.0.0.1
(``fake_models.openai_chat``).

aider has no MCP and declines to run shell commands, so it cannot report: its preset says
``reports = False`` and the runner decides its tasks by its exit code, which the task
record shows (``decided_by = exit_code``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from agent_clis import AIDER, InstalledCli, pip_cli
from fake_models.openai_chat import chat_requests, chat_server, turn_of
from fake_models.scripts import answer
from runner_support import open_spawn_town, task_settled

from tinytown.models import TaskDecider, TaskState

pytestmark = [pytest.mark.agent_cli, pytest.mark.anyio]

RUN_S = 300.0
# aider's "diff" edit format: an empty SEARCH creates the file.
EDIT = ("I will create it.\n\nhello.txt\n```\n<<<<<<< SEARCH\n=======\nhello from aider\n"
        ">>>>>>> REPLACE\n```\n")


def aider_python() -> str:
    """An interpreter aider 0.86 installs on (it requires Python < 3.13): this one, else the
    first python3.12/3.11/3.10 that runs (a pyenv shim may exist for a version not enabled)."""
    if sys.version_info < (3, 13):
        return sys.executable
    for name in ("python3.12", "python3.11", "python3.10", "/usr/bin/python3"):
        found = shutil.which(name)
        probe = "import sys, venv; sys.exit(sys.version_info >= (3, 13))"
        if found and subprocess.run([found, "-c", probe], capture_output=True, check=False).returncode == 0:
            return found
    pytest.fail("aider-chat 0.86 needs Python 3.10-3.12; install python3.12 (or set PYTHON for .ci/run)")


@pytest.fixture(scope="module")
def aider() -> InstalledCli:
    return pip_cli(AIDER, python=aider_python())


def aider_env(tt_env: dict[str, str], home: Path, aider: InstalledCli, api: str) -> dict[str, str]:
    return {
        **tt_env, "HOME": str(home),
        "PATH": os.pathsep.join([str(aider.bin_dir), str(Path(sys.executable).parent), tt_env["PATH"]]),
        "OPENAI_API_BASE": f"{api}/v1", "OPENAI_API_KEY": "fake-key",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm would fetch its price list from GitHub
    }


def tt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


async def test_a_spawned_aider_edits_in_a_town_that_is_no_repository_and_its_exit_code_decides_the_task(
    tt_env: dict[str, str], aider: InstalledCli, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    home = tmp_path_factory.mktemp("home")
    with chat_server(answer(EDIT)) as model:
        env = aider_env(tt_env, home, aider, model.url)
        async with open_spawn_town(env) as town:
            spawned = tt("spawn", "coder", "--cli", "aider", env=env)
            assert spawned.returncode == 0, spawned.stdout + spawned.stderr
            after = await town.last_event_id()
            task = await town.assign("create hello.txt saying hello", agent="coder")
            done = await task_settled(town, task.id, after, RUN_S)
            assert tt("kill", "coder", env=env).returncode == 0
    log = (root / ".tt" / "logs" / "coder.round-1.log").read_text()
    assert done.state == TaskState.COMPLETED, log
    assert done.decided_by == TaskDecider.EXIT_CODE
    assert "Applied edit to hello.txt" in (done.result or "")  # the output tail
    assert (root / "hello.txt").read_text() == "hello from aider\n"
    # Its flags were accepted and did what they say: no repository made, no commit message
    # asked for, one model request carrying the round prompt.
    assert not (root / ".git").exists()
    requests = chat_requests(model)
    assert len(requests) == 1, [r["messages"][0]["content"][:80] for r in requests]
    assert f"task id: {task.id}" in turn_of(requests[0]).prompt
    shown = tt("task", "show", task.id, env=env)
    assert "exit_code" in shown.stdout, shown.stdout
