"""``tinytown.toml``: reading, validating, writing, and finding the town directory.

A town is a directory holding ``tinytown.toml`` and a git-ignored runtime folder ``.tt/``.
The town is found from an explicit path, else ``TINYTOWN_TOWN``, else by searching upward
from the current directory (as git finds ``.git``).  Environment overrides the file:
``REDIS_URL`` replaces ``[redis] url``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tinytown.errors import Conflict, Invalid, NotFound
from tinytown.models import TOWN_NAME_RE

CONFIG_FILE = "tinytown.toml"
RUNTIME_DIR = ".tt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RedisSettings(_Strict):
    url: str | None = None
    durability: Literal["everysec", "strict"] = "everysec"
    # The managed server's binary, picked on purpose (a path, or a name on PATH); by default
    # the one recorded in .tt/ when the town's data was first written (server_binary.py).
    server: str | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url


class Limits(_Strict):
    """Size limits; anything over them is refused with ``invalid`` and nothing is stored."""

    max_body_bytes: int = Field(64 * 1024, gt=0)
    max_description_bytes: int = Field(16 * 1024, gt=0)
    max_result_bytes: int = Field(64 * 1024, gt=0)
    max_inbox: int = Field(10_000, gt=0)
    # One receive returns message bodies up to this total; the rest stays queued for the
    # next receive (a single message larger than this still comes, alone).
    max_receive_bytes: int = Field(100 * 1024, gt=0)


class AgentCliSettings(_Strict):
    """A custom preset: an argv template, never a shell string."""

    command: list[str] = Field(min_length=1)
    prompt: Literal["stdin", "arg"] = "stdin"
    env: dict[str, str] = Field(default_factory=dict)
    mcp_config_args: list[str] = Field(default_factory=list)
    # False: the CLI cannot report a task (no MCP, no shell); its exit code decides the end.
    reports: bool = True


class TownConfig(_Strict):
    name: str
    default_cli: str | None = None
    max_agents: int = Field(32, gt=0)
    stale_after_s: float = Field(120.0, gt=0)
    redelivery_after_s: float = Field(600.0, gt=0)
    # A spawned agent's runner stops after this long without a round (None: never).
    idle_timeout_s: float | None = Field(None, gt=0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    limits: Limits = Field(default_factory=Limits)
    agent_clis: dict[str, AgentCliSettings] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_town_name(cls, name: str) -> str:
        if not TOWN_NAME_RE.match(name):
            raise ValueError(
                "must be 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
            )
        return name

    @field_validator("stale_after_s", "redelivery_after_s", "idle_timeout_s", mode="before")
    @classmethod
    def _int_seconds_are_fine(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"'{where}': {item['msg']}")
    return "; ".join(parts)


def parse_config(data: dict[str, Any], source: str = CONFIG_FILE) -> TownConfig:
    """Validate a parsed TOML document.

    Raises:
        Invalid: with the offending key named.
    """
    try:
        return TownConfig.model_validate(data)
    except ValidationError as exc:
        raise Invalid(f"{source}: {_describe(exc)}") from None


def default_town_name(root: Path) -> str:
    """The directory name, lower-case, with characters a town name refuses replaced."""
    raw = root.resolve().name.lower()
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in raw).lstrip("_.-")
    return cleaned[:64] or "town"


@dataclass(frozen=True)
class TownPaths:
    """Where a town's files live."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def runtime(self) -> Path:
        return self.root / RUNTIME_DIR

    @property
    def logs(self) -> Path:
        return self.runtime / "logs"

    @property
    def mcp_configs(self) -> Path:
        return self.runtime / "mcp"


def load_config(paths: TownPaths) -> TownConfig:
    """Read and validate ``tinytown.toml``, then apply the environment overrides.

    Raises:
        NotFound: the file is missing.
        Invalid: it is not TOML or a key is wrong.
    """
    try:
        raw = paths.config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"no {CONFIG_FILE} in {paths.root}; run `tt init` there") from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise Invalid(f"{paths.config}: not valid TOML ({exc})") from None
    config = parse_config(data, str(paths.config))
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        try:
            redis = RedisSettings(url=env_url, durability=config.redis.durability)
        except ValidationError as exc:
            raise Invalid(f"REDIS_URL: {_describe(exc)}") from None
        config = config.model_copy(update={"redis": redis})
    return config


def find_town_root(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path:
    """Locate the town: ``explicit``, else ``TINYTOWN_TOWN``, else search upward.

    Raises:
        NotFound: no town there.
    """
    given = explicit if explicit is not None else os.environ.get("TINYTOWN_TOWN") or None
    if given is not None:
        root = Path(given).expanduser().resolve()
        if root.is_file() and root.name == CONFIG_FILE:
            root = root.parent
        if not (root / CONFIG_FILE).is_file():
            raise NotFound(f"no {CONFIG_FILE} in {root}; run `tt init` there")
        return root
    start = (cwd or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise NotFound(
        f"no {CONFIG_FILE} in {start} or any parent; run `tt init`, or pass --town / set TINYTOWN_TOWN"
    )


def init_town(
    root: Path, *, name: str | None = None, redis_url: str | None = None, force: bool = False
) -> TownConfig:
    """Create ``tinytown.toml`` and ``.tt/`` in ``root`` and git-ignore ``.tt/``.

    Raises:
        Conflict: a town exists there already and ``force`` is false.
        Invalid: a bad name or URL.
    """
    paths = TownPaths(root.resolve())
    if paths.config.exists() and not force:
        raise Conflict(f"{paths.config} exists already; pass --force to overwrite it")
    data: dict[str, Any] = {"name": name or default_town_name(paths.root)}
    if redis_url:
        data["redis"] = {"url": redis_url}
    config = parse_config(data, "tt init")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(render_config(config), encoding="utf-8")
    paths.runtime.mkdir(exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    _gitignore_runtime(paths.root)
    return config


def render_config(config: TownConfig) -> str:
    """The TOML text of a config: only what differs from the defaults, plus the name."""
    data = config.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data["name"] = config.name
    header = "# Tinytown town configuration. See configs/tinytown.toml for every key.\n"
    return header + tomli_w.dumps(data)


def _gitignore_runtime(root: Path) -> None:
    ignore = root / ".gitignore"
    lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.exists() else []
    if any(line.strip() in (".tt", ".tt/", "/.tt", "/.tt/") for line in lines):
        return
    text = "\n".join(lines)
    if text and not text.endswith("\n"):
        text += "\n"
    ignore.write_text(text + ".tt/\n", encoding="utf-8")


def mask_url(url: str | None) -> str | None:
    """``redis://user:secret@host:6379/0`` → ``redis://user:****@host:6379/0``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:****@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
