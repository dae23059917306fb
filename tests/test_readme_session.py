"""The README's typical session runs as written, in a fresh directory on the embedded server.

The only change made to the README's block: the scripted preset stands in for Claude Code
and Codex (their own tests drive the released CLIs: tests/test_cli_claude.py, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parent.parent / "README.md"


def typical_session() -> list[str]:
    """The command lines of the README's "A typical two-agent session" bash block."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## A typical two-agent session", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "the typical session has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readmes_typical_session_runs_as_written(tmp_path: Path) -> None:
    lines = typical_session()
    assert lines[0].startswith("tt init") and any(line.startswith("tt assign alice") for line in lines)
    env = clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this venv's tt
    printed: dict[str, str] = {}

    def sh(line: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    try:
        for line in lines:
            run = line.replace("--cli claude", "--cli scripted").replace("--cli codex", "--cli scripted")
            done = sh(run, timeout=360)
            assert done.returncode == 0, f"{line!r} exited {done.returncode}: {done.stdout}{done.stderr}"
            printed[line.split("  #")[0].strip()] = done.stdout
        # after the session's kills: rounds and orders read as sentences, not key=value dumps
        told = sh("tt history -n 100").stdout
        assert "=" not in told, told
        assert "alice finished round 1 (exit 0)" in told, told
        assert "conductor asked bob to stop after its round" in told, told
    finally:
        sh("tt kill alice --now; tt kill bob --now; tt down")
    received = printed["tt receive --timeout 300"]
    assert "task_done from alice" in received and "task #1" in received, received
    shown = printed["tt task show '#1'"]
    assert "completed" in shown and "fix the flaky login test" in shown, shown
    assert "alice" in printed["tt history --agent alice"]
