"""Files private to the user: ``.tt/`` and everything under it is 0700 (folders) / 0600 (files).

``.tt/`` holds the managed Redis's AOF (every message body), the logs of every agent, the
generated MCP configs and the round prompts.  Whatever the caller's umask, Tinytown creates
them through these helpers with owner-only modes, and tightens a ``.tt/`` an older version
left open (:func:`secure_runtime`).  The processes that write nothing but ``.tt/`` (the MCP
server, the runner, the managed redis-server) also run with umask 077 (:data:`PRIVATE_UMASK`),
so a file someone adds later is private too; the agent CLI a runner starts gets the user's
own umask back, as the files it writes in the repository are the user's.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO, Literal

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600

_user_umask: int | None = None


def use_private_umask() -> None:
    """Switch this process to umask 077, remembering the user's for :func:`user_umask`.

    Only for processes that write nothing outside ``.tt/`` (the MCP server, the runner).
    """
    global _user_umask
    previous = os.umask(PRIVATE_UMASK)
    if _user_umask is None:
        _user_umask = previous


def user_umask() -> int:
    """The umask to give a child that writes the user's files (-1: inherit ours)."""
    return -1 if _user_umask is None else _user_umask


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents inside it) mode 0700; tighten it if it exists."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path, DIR_MODE)
    return path


def tighten(path: Path, mode: int) -> None:
    """``chmod`` to ``mode`` when group or others have any access (own files only)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return
    if info.st_mode & 0o077:
        path.chmod(mode)


def open_private(path: Path, mode: Literal["ab", "wb"] = "ab") -> IO[bytes]:
    """Open a file for appending (or truncating) with mode 0600, creating its folder 0700."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    tighten(path, FILE_MODE)
    return os.fdopen(fd, mode)


def write_private(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically with a 0600 file."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class PrivateFileHandler(logging.FileHandler):
    """A :class:`logging.FileHandler` whose file is created 0600 (in a 0700 folder)."""

    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE))
        tighten(path, FILE_MODE)
        super().__init__(path, encoding="utf-8")


def secure_runtime(runtime: Path) -> None:
    """Make a ``.tt/`` that is open to others private again, with everything inside (a town
    made by an older version, or a copied one).  Cheap when it is private already."""
    try:
        if not runtime.is_dir() or not runtime.stat().st_mode & 0o077:
            return
    except OSError:
        return
    tighten(runtime, DIR_MODE)
    for directory, dirs, files in os.walk(runtime):
        for name in dirs:
            tighten(Path(directory) / name, DIR_MODE)
        for name in files:
            path = Path(directory) / name
            if not path.is_socket():
                tighten(path, FILE_MODE)
