"""``tinytown.toml`` and finding the town (SPEC 1): validation that names the key, the
search order, ``init``, the environment overrides, and password masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinytown.config import (
    TownPaths,
    default_town_name,
    find_town_root,
    init_town,
    load_config,
    mask_url,
    parse_config,
)
from tinytown.errors import Conflict, Invalid, NotFound


@pytest.fixture(autouse=True)
def _no_town_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own TINYTOWN_TOWN / REDIS_URL must not leak into these tests."""
    monkeypatch.delenv("TINYTOWN_TOWN", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


def _write(root: Path, text: str) -> TownPaths:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tinytown.toml").write_text(text, encoding="utf-8")
    return TownPaths(root)


# ----------------------------------------------------------------- validation


def test_a_full_config_is_read_with_its_defaults(tmp_path: Path) -> None:
    paths = _write(tmp_path, """
name = "shop"
default_cli = "claude"
max_agents = 8
stale_after_s = 30
redelivery_after_s = 1.5

[redis]
url = "redis://localhost:6390/2"
durability = "strict"

[limits]
max_inbox = 50

[agent_clis.mine]
command = ["my-agent", "--fast"]
prompt = "arg"
env = { MODE = "ci" }
""")
    config = load_config(paths)

    assert (config.name, config.default_cli, config.max_agents) == ("shop", "claude", 8)
    assert (config.stale_after_s, config.redelivery_after_s) == (30.0, 1.5)
    assert (config.redis.url, config.redis.durability) == ("redis://localhost:6390/2", "strict")
    assert (config.limits.max_inbox, config.limits.max_body_bytes) == (50, 64 * 1024)
    assert config.agent_clis["mine"].command == ["my-agent", "--fast"]
    assert config.agent_clis["mine"].env == {"MODE": "ci"}


def test_defaults_follow_the_spec() -> None:
    config = parse_config({"name": "t"})
    assert (config.stale_after_s, config.redelivery_after_s) == (120.0, 600.0)
    assert (config.limits.max_body_bytes, config.limits.max_description_bytes) == (65536, 16384)
    assert (config.limits.max_result_bytes, config.limits.max_inbox) == (65536, 10_000)
    assert (config.redis.url, config.redis.durability) == (None, "everysec")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('name = "t"\ncolour = "blue"\n', "colour"),
        ('name = "t"\n[limits]\nmax_body = 5\n', "limits.max_body"),
        ('name = "t"\n[redis]\nhost = "x"\n', "redis.host"),
        ('name = "t"\n[agent_clis.x]\ncommand = ["a"]\nshell = true\n', "agent_clis.x.shell"),
    ],
)
def test_an_unknown_key_is_refused_by_name(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(Invalid, match=rf"unknown key '{named}'"):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('name = "t"\nmax_agents = "ten"\n', "max_agents"),
        ('name = "t"\nmax_agents = 0\n', "max_agents"),
        ('name = "t"\nstale_after_s = "soon"\n', "stale_after_s"),
        ('name = "t"\nredelivery_after_s = 0\n', "redelivery_after_s"),
        ('name = "t"\n[limits]\nmax_inbox = 2.5\n', "limits.max_inbox"),
        ('name = "t"\n[redis]\ndurability = "paranoid"\n', "redis.durability"),
        ('name = "t"\n[redis]\nurl = "http://example.com"\n', "redis.url"),
        ('name = "t"\n[agent_clis.x]\ncommand = "rm -rf /"\n', "agent_clis.x.command"),
        ('name = "Bad Name"\n', "name"),
        ("max_agents = 3\n", "name"),
    ],
)
def test_a_wrong_type_or_value_is_refused_by_name(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(Invalid, match=rf"'{named}'"):
        load_config(_write(tmp_path, text))


def test_a_file_that_is_not_toml_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="not valid TOML"):
        load_config(_write(tmp_path, "name = \n"))


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="tt init"):
        load_config(TownPaths(tmp_path))


# ----------------------------------------------------------------- environment


def test_redis_url_in_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write(tmp_path, 'name = "t"\n[redis]\nurl = "redis://file:6379"\ndurability = "strict"\n')
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@env-host:6380/1")

    config = load_config(paths)

    assert config.redis.url == "rediss://:pw@env-host:6380/1"
    assert config.redis.durability == "strict"


def test_a_bad_redis_url_in_the_environment_is_invalid_and_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write(tmp_path, 'name = "t"\n')
    monkeypatch.setenv("REDIS_URL", "http://not-redis")

    with pytest.raises(Invalid, match="REDIS_URL"):
        load_config(paths)


# ----------------------------------------------------------------- finding the town


def test_an_explicit_path_wins_over_the_environment_and_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = _write(tmp_path / "explicit", 'name = "a"\n').root
    from_env = _write(tmp_path / "env", 'name = "b"\n').root
    monkeypatch.setenv("TINYTOWN_TOWN", str(from_env))

    assert find_town_root(explicit, cwd=from_env) == explicit.resolve()
    assert find_town_root(explicit / "tinytown.toml") == explicit.resolve()


def test_the_environment_wins_over_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = _write(tmp_path / "here", 'name = "a"\n').root
    from_env = _write(tmp_path / "env", 'name = "b"\n').root
    monkeypatch.setenv("TINYTOWN_TOWN", str(from_env))

    assert find_town_root(cwd=here) == from_env.resolve()


def test_the_town_is_found_by_searching_upward(tmp_path: Path) -> None:
    root = _write(tmp_path / "project", 'name = "p"\n').root
    deep = root / "src" / "pkg" / "sub"
    deep.mkdir(parents=True)

    assert find_town_root(cwd=deep) == root.resolve()


def test_no_town_anywhere_is_not_found_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFound, match="tt init"):
        find_town_root(cwd=tmp_path)
    monkeypatch.setenv("TINYTOWN_TOWN", str(tmp_path / "nowhere"))
    with pytest.raises(NotFound):
        find_town_root()


# ----------------------------------------------------------------- init


def test_init_creates_the_config_the_runtime_dir_and_ignores_it_in_git(tmp_path: Path) -> None:
    root = tmp_path / "My Project"
    root.mkdir()
    (root / ".gitignore").write_text("*.pyc", encoding="utf-8")

    config = init_town(root)

    assert config.name == "my-project"
    assert load_config(TownPaths(root)).name == "my-project"
    assert (root / ".tt").is_dir() and (root / ".tt" / "logs").is_dir()
    assert (root / ".gitignore").read_text(encoding="utf-8") == "*.pyc\n.tt/\n"


def test_init_twice_is_a_conflict_unless_forced_and_gitignore_gets_one_entry(tmp_path: Path) -> None:
    init_town(tmp_path, name="first")

    with pytest.raises(Conflict, match="--force"):
        init_town(tmp_path, name="second")
    assert load_config(TownPaths(tmp_path)).name == "first"

    init_town(tmp_path, name="second", redis_url="unix:///tmp/r.sock", force=True)

    config = load_config(TownPaths(tmp_path))
    assert (config.name, config.redis.url) == ("second", "unix:///tmp/r.sock")
    assert (tmp_path / ".gitignore").read_text(encoding="utf-8").splitlines().count(".tt/") == 1


def test_init_refuses_a_bad_name_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="'name'"):
        init_town(tmp_path, name="Not Valid!")
    assert not (tmp_path / "tinytown.toml").exists()


@pytest.mark.parametrize(
    ("directory", "expected"),
    [("Shop", "shop"), ("my app", "my-app"), ("_private", "private"), ("v1.2_x", "v1.2_x")],
)
def test_the_default_town_name_is_the_lower_case_directory_name(
    tmp_path: Path, directory: str, expected: str
) -> None:
    assert default_town_name(tmp_path / directory) == expected


# ----------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379", "redis://:****@host:6379"),
        ("redis://user:secret@host:6379/0", "redis://user:****@host:6379/0"),
        ("rediss://default:s3cr%40t@cache.example.com:6380/1", "rediss://default:****@cache.example.com:6380/1"),
        ("redis://:secret@[::1]:6379/0", "redis://:****@[::1]:6379/0"),
        ("redis://host:6379", "redis://host:6379"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("unix://:secret@/tmp/redis.sock?db=1", "unix://:****@/tmp/redis.sock?db=1"),
        (None, None),
    ],
)
def test_mask_url_hides_passwords(url: str | None, masked: str | None) -> None:
    assert mask_url(url) == masked
    if url and "secret" in url:
        assert "secret" not in (mask_url(url) or "")
