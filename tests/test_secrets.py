"""A Redis password, in whatever form the URL carries it, never shows: not in ``tt`` output
(text or ``--json``), not in ``town_status``, not in ``tt mcp config``, not in the MCP
server's stderr or ``.tt/logs``, not in error messages, not in generated MCP configs, and not
in ``tinytown.toml`` unless the user asked for it.  The tests use a real password-protected
redis-server (unix socket, IPv4 and IPv6) and real processes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import clean_env
from mcp_support import SCRIPT, stdio
from redis import Redis as SyncRedis
from redis.exceptions import RedisError
from runner_support import open_spawn_town, round_done

from tinytown.masking import mask_url, remember_url, scrub, strip_password

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis, pytest.mark.e2e]

PW = "Hunter2-s3cret"  # what must never show
ENCODED_PW = "Hunter2%2Ds3cret"  # the same password percent-encoded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PasswordRedis:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server is not installed; .ci/run installs it")
        self.sock = str(directory / "pw.sock")
        self.port = free_port()
        self.log = directory / "redis.log"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "::1", "--unixsocket", self.sock,
             "--unixsocketperm", "700", "--dir", str(directory), "--save", "", "--appendonly", "no",
             "--requirepass", PW],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # start-up has no event: bounded readiness probe
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if SyncRedis(unix_socket_path=self.sock, password=PW, socket_timeout=1).ping():
                    return
            except (RedisError, OSError):
                time.sleep(0.05)
        self.proc.kill()
        pytest.fail("redis-server did not answer within 30 s")

    def urls(self) -> dict[str, str]:
        """Every form of URL that carries the password, each one working."""
        return {
            "tcp userinfo": f"redis://:{PW}@127.0.0.1:{self.port}/0",
            "tcp user and password": f"redis://default:{PW}@127.0.0.1:{self.port}",
            "tcp percent-encoded": f"redis://default:{ENCODED_PW}@127.0.0.1:{self.port}/0",
            "ipv6": f"redis://:{PW}@[::1]:{self.port}/0",
            "tcp query password": f"redis://127.0.0.1:{self.port}/0?password={PW}",
            "unix userinfo": f"unix://:{PW}@{self.sock}",
            "unix query password": f"unix://{self.sock}?password={PW}",
            "unix query username and password": f"unix://{self.sock}?username=default&password={PW}&db=0",
        }


@pytest.fixture(scope="module")
def pw_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PasswordRedis]:
    server = PasswordRedis(tmp_path_factory.mktemp("pw-redis"))
    try:
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(30)


FORMS = ["tcp userinfo", "tcp user and password", "tcp percent-encoded", "ipv6", "tcp query password",
         "unix userinfo", "unix query password", "unix query username and password"]


def shows_no_password(text: str) -> bool:
    return PW not in text and ENCODED_PW not in text and "s3cret" not in text


def tt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=90, check=False)


def town_env(tmp_path: Path, name: str, url: str) -> dict[str, str]:
    root = tmp_path / "town"
    root.mkdir()
    (root / "tinytown.toml").write_text(f'name = "{name}"\n')
    return clean_env() | {"TINYTOWN_TOWN": str(root), "REDIS_URL": url}


def files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


@pytest.mark.parametrize("form", FORMS)
async def test_no_output_log_or_config_shows_the_redis_password(
    pw_redis: PasswordRedis, form: str, tmp_path: Path, town_name: str
) -> None:
    url = pw_redis.urls()[form]
    env = town_env(tmp_path, town_name, url)
    root = Path(env["TINYTOWN_TOWN"])
    outputs: list[str] = []
    status = tt("status", env=env)
    assert status.returncode == 0, status.stderr  # it works: the password reached Redis
    assert "****" in status.stdout
    outputs += [status.stdout, status.stderr]
    as_json = tt("status", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert "****" in json.loads(as_json.stdout)["redis"]
    outputs += [as_json.stdout, as_json.stderr]
    errlog = tmp_path / "server.err"
    with errlog.open("w") as err:
        async with stdio(env, "alice", errlog=err) as client:
            seen = await client.call_tool("town_status", {})
            outputs.append(json.dumps(seen.structured_content))
            assert "****" in seen.structured_content["redis"]  # type: ignore[index]
    outputs.append(errlog.read_text())
    server_log = (root / ".tt" / "logs" / "mcp-alice.log").read_text()
    assert "serving" in server_log and "****" in server_log  # its Redis address, masked
    outputs += [p.read_text() for p in files_under(root)]
    for n, text in enumerate(outputs):
        assert shows_no_password(text), (n, text)


@pytest.mark.parametrize("form", ["unix query password", "tcp user and password"])
def test_tt_mcp_config_refers_to_redis_url_instead_of_printing_its_password(
    pw_redis: PasswordRedis, form: str, tmp_path: Path, town_name: str
) -> None:
    env = town_env(tmp_path, town_name, pw_redis.urls()[form])
    for client in ("claude", "codex", "cursor", "desktop"):
        printed = tt("mcp", "config", "--client", client, "--agent", "alice", "--json", env=env)
        assert printed.returncode == 0, printed.stderr
        assert shows_no_password(printed.stdout + printed.stderr), printed.stdout
        assert "REDIS_URL" in printed.stderr  # what to do about the password
        config = json.loads(printed.stdout)["config"]
        if client == "codex":
            assert 'env_vars = [\n    "REDIS_URL",\n]' in config or 'env_vars = ["REDIS_URL"]' in config
        elif client == "desktop":
            assert "****" in config
        else:
            assert "${" in config and "REDIS_URL}" in config
    text = tt("mcp", "config", env=env)
    assert text.returncode == 0 and shows_no_password(text.stdout + text.stderr)


@pytest.mark.parametrize("form", ["unix query password", "tcp userinfo"])
async def test_a_spawned_agent_works_with_the_password_only_in_redis_url(
    pw_redis: PasswordRedis, form: str, tmp_path: Path, town_name: str
) -> None:
    env = town_env(tmp_path, town_name, pw_redis.urls()[form])
    root = Path(env["TINYTOWN_TOWN"])
    async with open_spawn_town(env) as town:
        await town.spawn_agent("alice", cli="scripted")
        after = await town.channel.last_event_id()
        task = await town.assign("6 * 7", agent="alice")
        await round_done(town, "alice", after)
        done = await town.get_task(task.id)
        assert (done.state, done.result) == ("completed", "6 * 7 = 42")  # MCP reached Redis
        generated = (root / ".tt" / "mcp" / "alice.json").read_text()
        assert json.loads(generated)["mcpServers"]["tinytown"]["env"]["REDIS_URL"] == "${REDIS_URL}"
        await town.kill_agent("alice")
    for path in files_under(root):
        assert shows_no_password(path.read_text(errors="replace")), path


@pytest.mark.parametrize("bad", [
    "redis://:Wrong-Hunter2-s3cret@127.0.0.1:{port}/0",
    "unix://{sock}?password=Wrong-Hunter2-s3cret",
    "rediss://:Hunter2-s3cret@127.0.0.1:{port}/0",  # TLS to a plain server
    "redis://:Hunter2-s3cret@127.0.0.1:1/0",  # nobody listens
    "redis://:Hunter2-s3cret@[::1]:99999/0",  # a port out of range
    "unix:///nonexistent/dir/r.sock?password=Hunter2-s3cret",
])
def test_errors_about_a_url_with_a_password_do_not_show_it(
    pw_redis: PasswordRedis, bad: str, tmp_path: Path, town_name: str
) -> None:
    url = bad.format(port=pw_redis.port, sock=pw_redis.sock)
    env = town_env(tmp_path, town_name, url)
    for args in (["status", "--json"], ["list"]):
        done = tt(*args, env=env)
        assert done.returncode == 1, done
        assert done.stderr.startswith(("tt: unavailable: ", "tt: invalid: ")), done.stderr
        assert shows_no_password(done.stdout + done.stderr), done.stderr
        if "Wrong" in bad:
            assert "refused the credentials" in done.stderr, done.stderr
    served = subprocess.run([str(SCRIPT)], env=env, input="", capture_output=True, text=True,
                            timeout=90, check=False)
    assert served.returncode == 1 and shows_no_password(served.stderr), served.stderr


def test_tt_init_writes_the_password_into_tinytown_toml_only_when_asked(
    pw_redis: PasswordRedis, tmp_path: Path
) -> None:
    url = pw_redis.urls()["unix query password"]
    env = clean_env()
    plain = tmp_path / "plain"
    made = tt("--town", str(plain), "init", "--redis-url", url, env=env)
    assert made.returncode == 0, made.stderr
    text = (plain / "tinytown.toml").read_text()
    assert shows_no_password(text) and f"unix://{pw_redis.sock}" in text
    assert "REDIS_URL" in made.stderr and shows_no_password(made.stdout + made.stderr)
    # with the full URL in REDIS_URL the town logs in
    works = tt("--town", str(plain), "status", env=env | {"REDIS_URL": url})
    assert works.returncode == 0, works.stderr

    stored = tmp_path / "stored"
    asked = tt("--town", str(stored), "init", "--redis-url", url, "--store-password", "--json", env=env)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["password_stored"] is True and shows_no_password(asked.stdout)
    assert PW in (stored / "tinytown.toml").read_text()
    status = tt("--town", str(stored), "status", env=env)
    assert status.returncode == 0 and shows_no_password(status.stdout + status.stderr)


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:pw-1@host:6379", "redis://:****@host:6379"),
    ("redis://user:pw-1@host:6379/0", "redis://user:****@host:6379/0"),
    ("rediss://default:s3cr%40t@cache.example.com:6380/1", "rediss://default:****@cache.example.com:6380/1"),
    ("redis://:pw-1@[::1]:6379/0", "redis://:****@[::1]:6379/0"),
    ("redis://:pw-1@[fe80::1%25eth0]:6379", "redis://:****@[fe80::1%25eth0]:6379"),
    ("unix://:pw-1@/tmp/redis.sock?db=1", "unix://:****@/tmp/redis.sock?db=1"),
    ("unix://user:pw-1@/tmp/r.sock", "unix://user:****@/tmp/r.sock"),
    ("unix:///tmp/r.sock?password=pw-1", "unix:///tmp/r.sock?password=****"),
    ("unix:///tmp/r.sock?db=2&password=pw-1&username=bob", "unix:///tmp/r.sock?db=2&password=****&username=bob"),
    ("unix:///tmp/r.sock?PASSWORD=pw-1", "unix:///tmp/r.sock?PASSWORD=****"),
    ("unix:///tmp/r.sock?pass%77ord=pw-1", "unix:///tmp/r.sock?pass%77ord=****"),
    ("redis://h/0?db=1;password=pw-1", "redis://h/0?db=1;password=****"),
    ("redis://pw-1@host:6379", "redis://****@host:6379"),  # a lone user-info may be a password
    ("redis://:pw-1@host:99999", "redis://:****@host:99999"),  # malformed: still masked, no error
    ("redis://:p@ss:w0rd@host", "redis://:****@host"),  # an unencoded '@' in the password
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
])
def test_mask_url_hides_every_form_of_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_strip_password_keeps_everything_but_the_password() -> None:
    assert strip_password("unix:///s.sock?username=bob&password=x&db=1") == "unix:///s.sock?username=bob&db=1"
    assert strip_password("redis://:x@h:1/0") == "redis://h:1/0"
    assert strip_password("rediss://bob:x@[::1]:1/0") == "rediss://bob@[::1]:1/0"
    assert strip_password("redis://h:1/0") == "redis://h:1/0"


def test_scrub_masks_urls_inside_text() -> None:
    text = "cannot reach unix:///r.sock?password=pw-1 (or redis://:pw-2@h:1), giving up"
    assert scrub(text) == "cannot reach unix:///r.sock?password=**** (or redis://:****@h:1), giving up"


def test_scrub_masks_a_remembered_password_wherever_it_appears_but_not_a_user_name() -> None:
    remember_url("redis://default:Zebra%2D77@h:1/0")
    remember_url("unix:///s.sock?username=alice&password=Quokka-88")
    remember_url("redis://bob@h:1")
    assert scrub("AUTH Zebra-77 / Zebra%2D77 / Quokka-88 refused") == "AUTH **** / **** / **** refused"
    assert scrub("default alice bob") == "default alice bob"


def test_a_town_without_its_password_answers_unavailable(pw_redis: PasswordRedis, tmp_path: Path) -> None:
    url = pw_redis.urls()["unix query password"]
    env = clean_env()
    plain = tmp_path / "plain"
    assert tt("--town", str(plain), "init", "--redis-url", url, env=env).returncode == 0
    refused = tt("--town", str(plain), "status", env=env)
    assert refused.returncode == 1 and "unavailable" in refused.stderr
