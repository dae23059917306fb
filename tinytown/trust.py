"""Trust: commands from a repository's ``tinytown.toml`` run only once the user trusted that file.

A cloned repository's ``tinytown.toml`` can define presets (``[agent_clis.NAME]``: a
command and an ``env``) that run on the next ``tt spawn``.  Like direnv and mise, such a file
is inert until the user has read it and run ``tt trust``, which remembers the file's path and
the SHA-256 of its exact bytes in the user's config directory:

    $XDG_CONFIG_HOME/tinytown/trusted     (default ~/.config/tinytown/trusted; mode 0600)
    one line per trusted file:  sha256:<hex digest> <absolute path of tinytown.toml>

The rules:

* A file with no ``[agent_clis]`` presets (so no ``env`` either) needs no trust.
* A preset (or ``default_cli``) naming a preset of the file runs only when the file's path
  *and* current content match a trusted line; any edit needs ``tt trust`` again.  Built-in
  presets keep working in an untrusted town.
* A file preset named like a built-in (``claude``, ``codex``...) replaces it: ``tt trust``
  warns, and every spawn that uses it logs a warning.
* Refusals are one line: ``forbidden: <file> defines agent presets ... run `tt trust` ...``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tinytown.errors import Forbidden
from tinytown.private import private_dir, write_private

if TYPE_CHECKING:
    from tinytown.config import TownConfig, TownPaths

log = logging.getLogger("tinytown.trust")

STORE_ENV = "XDG_CONFIG_HOME"


class TrustReport(BaseModel):
    """What ``tt trust`` recorded, for the user to read."""

    file: str
    digest: str
    presets: dict[str, list[str]]
    env: dict[str, list[str]]
    overrides: list[str]
    """File presets that replace a built-in of the same name."""


def store_path() -> Path:
    """The user's list of trusted files."""
    base = os.environ.get(STORE_ENV) or str(Path.home() / ".config")
    return Path(base).expanduser() / "tinytown" / "trusted"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _lines() -> list[str]:
    try:
        return store_path().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def is_trusted(config_file: Path, digest: str) -> bool:
    """Whether this exact content of ``config_file`` was trusted."""
    wanted = f"{digest} {config_file.resolve()}"
    return any(line.strip() == wanted for line in _lines())


def remember(config_file: Path, digest: str) -> None:
    """Record ``config_file`` at ``digest`` as trusted (replacing an older version of it)."""
    path = str(config_file.resolve())
    kept = [line for line in _lines() if line.strip() and line.split(" ", 1)[-1] != path]
    store = store_path()
    private_dir(store.parent)
    write_private(store, "\n".join([*kept, f"{digest} {path}"]) + "\n")


def forget(config_file: Path) -> bool:
    """Drop every trusted version of ``config_file``; whether there was one."""
    path = str(config_file.resolve())
    lines = _lines()
    kept = [line for line in lines if line.strip() and line.split(" ", 1)[-1] != path]
    if len(kept) == len([line for line in lines if line.strip()]):
        return False
    write_private(store_path(), "".join(f"{line}\n" for line in kept))
    return True


def untrusted_error(config_file: Path, names: Sequence[str], changed: bool) -> Forbidden:
    state = "changed since you trusted it" if changed else "not trusted"
    return Forbidden(
        f"{config_file} defines agent presets ({', '.join(sorted(names))}) that run commands and "
        f"is {state}; read it, then run `tt trust` in {config_file.parent}"
    )


def was_ever_trusted(config_file: Path) -> bool:
    path = str(config_file.resolve())
    return any(line.split(" ", 1)[-1] == path for line in _lines() if line.strip())


def warn_override(name: str, config_file: Path | None) -> str:
    """The loud line for a file preset that replaces the built-in of the same name."""
    where = str(config_file) if config_file else "tinytown.toml"
    text = f"preset {name!r} from {where} REPLACES the built-in {name!r} preset"
    log.warning(text)
    return text


def require_trusted(config: TownConfig) -> None:
    """Refuse to run a preset of ``config``'s file unless the user trusted this content.

    A config not read from a file (built in code) has nothing to trust.

    Raises:
        Forbidden: the file defines presets and this exact content is not trusted (one line
            saying to run ``tt trust``).
    """
    if not config.agent_clis or config.source is None:
        return
    file, digest = config.source
    if not is_trusted(file, digest):
        raise untrusted_error(file, list(config.agent_clis), changed=was_ever_trusted(file))


def trust_town(paths: TownPaths) -> TrustReport:
    """Trust the current content of the town's ``tinytown.toml`` (``tt trust``).

    Raises:
        NotFound, Invalid: no file, or one that is not a valid config (nothing is recorded).
    """
    from tinytown.config import parse_config, read_config_file
    from tinytown.presets import BUILTIN_PRESETS

    data, digest = read_config_file(paths)
    config = parse_config(data, str(paths.config))
    remember(paths.config, digest)
    overrides = sorted(name for name in config.agent_clis if name in BUILTIN_PRESETS)
    for name in overrides:
        warn_override(name, paths.config)
    return TrustReport(
        file=str(paths.config.resolve()), digest=digest,
        presets={n: [*s.command, *s.mcp_config_args] for n, s in sorted(config.agent_clis.items())},
        env={n: sorted(s.env) for n, s in sorted(config.agent_clis.items()) if s.env},
        overrides=overrides,
    )
