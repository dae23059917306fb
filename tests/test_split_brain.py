"""Never two servers for one town, also for a ``tt`` run inside a sandbox (issue 7).

A CLI's sandbox may hide the server's process (another pid namespace) and forbid its socket
(another user, a syscall filter).  Old behaviour: the pid looked dead, so ``tt`` deleted the
live server's socket and pid file and started a second server on the same AOF.  Here a real
``tt`` runs in a new pid namespace (``unshare --pid --fork --mount-proc``) as user ``nobody``
against a live server: it must refuse, and the server keep its socket and pid file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tinytown.redis_server import ManagedRedis

pytestmark = [
    pytest.mark.real_redis,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare and setuid (CI runs as root)"),
]

TT = str(Path(sys.executable).with_name("tt"))

# Imports everything `tt up` / `tt down` touch while the process may still read the venv and
# the standard library, then becomes nobody and runs the real CLI entry point twice.
AS_NOBODY = """
import os, sys
import tinytown.cli.main as main, tinytown.cli.commands, tinytown.cli.lifecycle, tinytown.cli.render
import tinytown.connect, tinytown.town, rich.console, rich.table, rich.text, json, encodings.idna
os.setgroups([]); os.setgid(65534); os.setuid(65534)
print("pid namespace:", os.getpid(), "uid:", os.getuid(), file=sys.stderr, flush=True)
codes, town = [], sys.argv[1]
for command in ("up", "down"):
    sys.argv = ["tt", "--town", town, command]
    try:
        main.main()
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
    sys.stderr.flush()
print(json.dumps(codes), flush=True)
"""


@pytest.fixture
def checkout_reachable() -> Iterator[None]:
    """nobody must reach the venv and the checkout (modules imported lazily after setuid):
    a checkout in a private folder (a 0700 mkdtemp, as CI may clone into) gets the search
    bit on that folder for the test, and its mode back after."""
    changed: list[tuple[Path, int]] = []
    for base in (Path(sys.prefix), Path(__file__).resolve().parent.parent):
        for folder in [*reversed(base.parents), base]:
            mode = folder.stat().st_mode & 0o7777
            if not mode & 0o001 and all(folder != f for f, _ in changed):
                changed.append((folder, mode))
                folder.chmod(mode | 0o001)
    try:
        yield
    finally:
        for folder, mode in reversed(changed):
            folder.chmod(mode)


@pytest.fixture
def town(checkout_reachable: None) -> Iterator[Path]:
    """A town in a folder nobody may enter (but not its .tt/), its managed server running."""
    root = Path(tempfile.mkdtemp(prefix="tt-split-", dir="/tmp"))
    root.chmod(0o755)
    (root / "tinytown.toml").write_text('name = "split"\n')
    (root / "tinytown.toml").chmod(0o644)
    managed = ManagedRedis(root / ".tt")
    managed.ensure_running()
    try:
        yield root
    finally:
        managed.stop()
        shutil.rmtree(root, ignore_errors=True)


def server_pid(managed: ManagedRedis) -> int:
    with redis.Redis(unix_socket_path=managed.connect_path(), socket_timeout=5) as r:
        return int(r.info("server")["process_id"])


def servers_of(town: Path) -> list[int]:
    """Pids of the servers whose command line names the town's socket."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(town).encode() in (entry / "cmdline").read_bytes():
                if b"unixsocket" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("tt_dir", ["private", "open"])
def test_a_tt_that_cannot_see_the_servers_pid_or_socket_refuses_to_start_a_second_server(
    town: Path, tt_dir: str
) -> None:
    managed = ManagedRedis(town / ".tt")
    pid = server_pid(managed)
    pid_file = managed.pid_path.read_text()
    if tt_dir == "open":  # the sandbox may read and write the town's files, just not the socket
        for path in [managed.runtime_dir, *managed.runtime_dir.rglob("*")]:
            if not path.is_socket():
                path.chmod(0o777 if path.is_dir() else 0o666)
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", AS_NOBODY, str(town)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "pid namespace: 1 uid: 65534" in proc.stderr  # pid 1 of its own namespace: ours is invisible
    assert json.loads(proc.stdout.splitlines()[-1]) == [1, 1], proc.stderr
    assert "tt: unavailable: cannot tell whether the managed Redis" in proc.stderr  # up
    assert "tt: unavailable: cannot stop the managed Redis" in proc.stderr  # down
    assert "Not starting a second server" in proc.stderr
    assert managed.socket_path.is_socket() and managed.pid_path.read_text() == pid_file
    assert server_pid(managed) == pid  # the live server answers, untouched
    assert servers_of(town) == [pid]  # and no second one


def test_a_tt_in_another_pid_namespace_that_reaches_the_socket_uses_the_live_server(town: Path) -> None:
    managed = ManagedRedis(town / ".tt")
    pid = server_pid(managed)
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", TT, "--town", str(town), "up", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["started"] is False
    assert server_pid(managed) == pid and managed.pid_path.read_text().strip() == str(pid)
