"""The released agent CLIs, installed by the tests themselves at pinned versions.

Each CLI lives in its own folder under a cache directory (``TINYTOWN_CLI_CACHE``, else
``~/.cache/tinytown-tests/clis``), keyed by package and version, so a rerun installs
nothing.  Installs are serialised with a file lock: several pytest processes (or xdist
workers) asking for the same CLI at once install it once.

npm packages come from the npm registry with ``npm install --prefix``; aider (PyPI) goes
into a venv of its own, since its pinned dependencies would fight ours.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CLAUDE_CODE = ("@anthropic-ai/claude-code", "2.1.332", "claude")
CODEX = ("@openai/codex", "0.169.0", "codex")
GEMINI_CLI = ("@google/gemini-cli", "0.61.0", "gemini")
AIDER = ("aider-chat", "0.86.2", "aider")

INSTALL_TIMEOUT_S = 900


def cache_dir() -> Path:
    root = os.environ.get("TINYTOWN_CLI_CACHE") or str(Path.home() / ".cache" / "tinytown-tests" / "clis")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class InstalledCli:
    package: str
    version: str
    binary: Path

    @property
    def bin_dir(self) -> Path:
        return self.binary.parent


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    pytest.fail(f"installing {what} failed (exit {proc.returncode}):\n{tail}")


def npm_cli(spec: tuple[str, str, str]) -> InstalledCli:
    """Install an npm CLI (package, version, bin name) once; return its binary."""
    package, version, bin_name = spec
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed; .ci/run installs Node.js")
    folder = cache_dir() / f"{package.replace('/', '+')}@{version}"
    binary = folder / "node_modules" / ".bin" / bin_name
    with _locked(folder):
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            proc = subprocess.run(
                [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error",
                 f"{package}@{version}"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
            )
            if proc.returncode != 0 or not binary.exists():
                _fail(f"{package}@{version}", proc)
            (folder / ".complete").write_text(version)
    return InstalledCli(package, version, binary)


def pip_cli(spec: tuple[str, str, str], python: str | None = None) -> InstalledCli:
    """Install a PyPI CLI (package, version, bin name) into a venv of its own, once."""
    package, version, bin_name = spec
    folder = cache_dir() / f"{package}@{version}"
    binary = folder / "bin" / bin_name
    with _locked(folder):
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            proc = subprocess.run([python or sys.executable, "-m", "venv", str(folder)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                _fail(f"a venv for {package}", proc)
            proc = subprocess.run(
                [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", f"{package}=={version}"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
            )
            if proc.returncode != 0 or not binary.exists():
                _fail(f"{package}=={version}", proc)
            (folder / ".complete").write_text(version)
    return InstalledCli(package, version, binary)
