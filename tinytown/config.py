"""``tinytown.toml``: reading, validating, writing, and finding the town directory.

A town is a directory holding ``tinytown.toml`` and a git-ignored runtime folder ``.tt/``.
The town is found from an explicit path, else ``TINYTOWN_TOWN``, else by searching upward
from the current directory (as git finds ``.git``).  Environment overrides the file:
``REDIS_URL`` replaces ``[redis] url``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from tinytown.errors import Conflict, Invalid, NotFound
from tinytown.masking import mask_url, remember_url, scrub, strip_password
from tinytown.models import AGENT_NAME_RULE, PRESET_NAME_RE, TOWN_NAME_RE
from tinytown.private import private_dir
from tinytown.trust import digest_of

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
    def _usable_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_redis_url(url)
        return url


def check_redis_url(url: str) -> None:
    """Refuse a URL redis-py would choke on later (a port out of range, an unknown query
    parameter, a unix URL without a path), with a message that never holds its password.

    Raises:
        ValueError: what is wrong.
    """
    import redis

    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        from tinytown.topology import check_sentinel_url

        try:
            check_sentinel_url(url)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{mask_url(url)} is not a usable Sentinel URL: {scrub(str(exc))}") from None
        return
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "must be a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL"
        )
    _refuse_several_hosts(url, scheme)
    try:
        pool = redis.ConnectionPool.from_url(url)
        pool.make_connection()  # builds the connection object only: no I/O
    except (ValueError, TypeError) as exc:
        text = str(exc)
        if "unexpected keyword argument" in text:
            name = text.rsplit(" ", 1)[-1].strip("'")
            text = f"unknown query parameter {name!r}"
        raise ValueError(f"{mask_url(url)} is not a usable Redis URL: {scrub(text)}") from None
    if scheme == "unix" and not pool.connection_kwargs.get("path"):
        raise ValueError(f"{mask_url(url)} names no socket path (unix:///path/to/redis.sock)")


def _refuse_several_hosts(url: str, scheme: str) -> None:
    """A plain ``redis://h1,h2/`` names one server; several hosts would fail every command
    later (redis-py reads ``h1,h2`` as one host name)."""
    if scheme not in ("redis", "rediss"):
        return
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    if "," in hosts:
        raise ValueError(
            f"{mask_url(url)} names several hosts; a redis:// URL names one server (for a "
            "cluster, any one of its nodes; for Sentinel, redis+sentinel://h1:26379,h2:26379/SERVICE)"
        )


class Limits(_Strict):
    """Size limits; anything over them is refused with ``invalid`` and nothing is stored."""

    max_body_bytes: int = Field(64 * 1024, gt=0)
    max_description_bytes: int = Field(16 * 1024, gt=0)
    max_result_bytes: int = Field(64 * 1024, gt=0)
    max_inbox: int = Field(10_000, gt=0)
    # One receive returns message bodies up to this total; the rest stays queued for the
    # next receive (a single message larger than this still comes, alone).
    max_receive_bytes: int = Field(100 * 1024, gt=0)


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> int:
    """Seconds from ``"14d"``-style text (``s``, ``m``, ``h``, ``d``, ``w``) or a whole number
    of seconds.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.lower())):
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: give seconds, or a number with s, m, h, d or w")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class RetentionSettings(_Strict):
    """How long finished things are kept (seconds, or ``"14d"``-style text; ``0`` keeps them
    forever).  Expiry is lazy: see :mod:`tinytown.retention`."""

    tasks: int = 14 * 86400
    """A completed, failed or cancelled task (its record, index entries and thread)."""
    messages: int = 86400
    """An acknowledged message."""
    events: int = 14 * 86400
    """An entry of the event stream (which also never holds more than ~10,000 entries)."""

    @field_validator("tasks", "messages", "events", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)


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
    # Spawned agents work in their own git worktree unless `tt spawn --no-worktree`.
    worktrees: bool = False
    redis: RedisSettings = Field(default_factory=RedisSettings)
    limits: Limits = Field(default_factory=Limits)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    agent_clis: dict[str, AgentCliSettings] = Field(default_factory=dict)
    # The file this config was read from and the digest of its bytes (for `tt trust`).
    _source: tuple[Path, str] | None = PrivateAttr(default=None)

    def mark_source(self, file: Path, digest: str) -> None:
        self._source = (file, digest)

    @property
    def source(self) -> tuple[Path, str] | None:
        """``(tinytown.toml path, "sha256:<hex>")`` when read from a file, else ``None``."""
        return self._source

    @field_validator("agent_clis")
    @classmethod
    def _valid_preset_names(cls, presets: dict[str, AgentCliSettings]) -> dict[str, AgentCliSettings]:
        for name in presets:
            if not PRESET_NAME_RE.match(name):
                raise ValueError(f"preset name {name!r} is not allowed: use {AGENT_NAME_RULE}")
        return presets

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
    for item in error.errors(include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"'{where}': {scrub(message)}")
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
    data, digest = read_config_file(paths)
    remember_url(_raw_url(data))
    config = parse_config(data, str(paths.config))
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        remember_url(env_url)
        try:
            redis = RedisSettings(url=env_url, durability=config.redis.durability)
        except ValidationError as exc:
            problems = "; ".join(
                scrub(str(e["msg"]).removeprefix("Value error, ")) for e in exc.errors(include_input=False)
            )
            raise Invalid(f"REDIS_URL: {problems}") from None
        config = config.model_copy(update={"redis": redis})
    config.mark_source(paths.config, digest)
    return config


def read_config_file(paths: TownPaths) -> tuple[dict[str, Any], str]:
    """The parsed TOML of ``tinytown.toml`` and the digest of its exact bytes.

    Raises:
        NotFound: the file is missing.
        Invalid: it is not UTF-8 TOML.
    """
    try:
        raw = paths.config.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no {CONFIG_FILE} in {paths.root}; run `tt init` there") from None
    try:
        return tomllib.loads(raw.decode("utf-8")), digest_of(raw)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise Invalid(f"{paths.config}: not valid TOML ({exc})") from None


def _raw_url(data: dict[str, Any]) -> str | None:
    redis = data.get("redis")
    url = redis.get("url") if isinstance(redis, dict) else None
    return url if isinstance(url, str) else None


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
    root: Path,
    *,
    name: str | None = None,
    redis_url: str | None = None,
    force: bool = False,
    store_password: bool = False,
) -> TownConfig:
    """Create ``tinytown.toml`` and ``.tt/`` in ``root`` and git-ignore ``.tt/``.

    ``tinytown.toml`` is meant to be committed: a password in ``redis_url`` is left out of it
    (the user puts the full URL in ``REDIS_URL``) unless ``store_password``.

    Raises:
        Conflict: a town exists there already and ``force`` is false.
        Invalid: a bad name or URL.
    """
    paths = TownPaths(root.resolve())
    if paths.config.exists() and not force:
        raise Conflict(f"{paths.config} exists already; pass --force to overwrite it")
    data: dict[str, Any] = {"name": name or default_town_name(paths.root)}
    if redis_url:
        remember_url(redis_url)
        parse_config({**data, "redis": {"url": redis_url}}, "tt init --redis-url")
        data["redis"] = {"url": redis_url if store_password else strip_password(redis_url)}
    config = parse_config(data, "tt init")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(render_config(config), encoding="utf-8")
    private_dir(paths.runtime)
    private_dir(paths.logs)
    _gitignore_runtime(paths.root)
    return config


def example_config() -> str:
    """The annotated tinytown.toml: every key with its default (shipped in the package)."""
    return example_text("tinytown.toml")


def example_text(name: str) -> str:
    """A file of ``tinytown/examples`` (in a checkout: links into ``configs/``)."""
    from importlib.resources import files

    return files("tinytown").joinpath("examples", name).read_text(encoding="utf-8")


def render_config(config: TownConfig) -> str:
    """The TOML text of a config: only what differs from the defaults, plus the name."""
    import tomli_w  # only writing a config needs it

    data = config.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data["name"] = config.name
    header = "# Tinytown town configuration. Every key with its default: tt init --example\n"
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
