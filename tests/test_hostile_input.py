"""Hostile input at the edges: every JSON-RPC line a client can write gets a protocol reply
from a real ``tinytown-mcp`` process over stdio, bad Redis URLs are ``invalid:`` config
errors, and no name reaches a file path or a Redis key unchecked."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import clean_env
from mcp_support import SCRIPT

from tinytown.config import TownPaths
from tinytown.errors import Invalid
from tinytown.processes import lock_path, mcp_config_path, round_log_path, runner_log_path

pytestmark = [pytest.mark.real_redis, pytest.mark.e2e]

DEADLINE_S = 60.0
START_S = 120.0  # a cold server start on a loaded machine: imports, Redis, the session


class RawServer:
    """``tinytown-mcp`` over its real stdin/stdout, one JSON line at a time (no MCP client:
    a client would never write these lines)."""

    def __init__(self, env: dict[str, str], errlog: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [str(SCRIPT), "--agent", "conductor"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=errlog, env=env,
        )
        self._buffer = b""

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        """The next line the server writes (fails when none comes within the deadline)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(remaining, 0))[0] if remaining > 0 else []
            if not ready:
                pytest.fail(f"no reply within {timeout_s:g}s (server alive: {self.proc.poll() is None})")
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"the server closed stdout (exit {self.proc.wait(5)})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        parsed = json.loads(line)
        assert isinstance(parsed, dict)
        return parsed

    def request(
        self, request_id: int, method: str, params: dict[str, Any] | None = None,
        timeout_s: float = DEADLINE_S,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(json.dumps(message).encode())
        return self.reply(timeout_s)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(tt_env: dict[str, str], tmp_path: Path) -> Iterator[RawServer]:
    with (tmp_path / "server.err").open("wb") as errlog:
        raw = RawServer(tt_env, errlog)
        try:
            init = raw.request(1, "initialize", {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "hostile", "version": "1"},
            }, timeout_s=START_S)
            assert "result" in init, init
            raw.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
            yield raw
        finally:
            raw.close()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"x": value}
    return value


def call_line(request_id: int, arguments: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": "send_message", "arguments": arguments}}).encode()


HOSTILE: dict[str, tuple[bytes, int | None, int]] = {
    # name: (line, the id the reply must carry, JSON-RPC error code)
    "arguments nested 200 deep": (
        call_line(11, {"to": "conductor", "body": "x", "extra": nested(200)}), 11, -32700),
    "a lone surrogate in an argument": (
        b'{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"send_message",'
        b'"arguments":{"to":"conductor","body":"\\ud800"}}}', 12, -32700),
    "a lone surrogate as the id": (b'{"jsonrpc":"2.0","id":"\\udfff","method":"ping"}', None, -32700),
    "not JSON": (b"{this is not json", None, -32700),
    "not UTF-8": (b'{"jsonrpc":"2.0","id":14,"method":"ping","params":{"x":"\xff\xfe"}}', None, -32700),
    "a JSON array": (b"[1, 2, 3]", None, -32600),
    "a JSON string": (b'"hello"', None, -32600),
    "no method": (b'{"jsonrpc":"2.0","id":17}', 17, -32600),
    "the wrong jsonrpc version": (b'{"jsonrpc":"1.0","id":18,"method":"ping"}', 18, -32600),
    "an id that is an object": (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', None, -32600),
    "nested 5000 deep": (b"[" * 5000 + b"]" * 5000, None, -32700),
}


def test_every_hostile_json_rpc_line_gets_a_protocol_error_reply_and_the_server_goes_on(
    server: RawServer,
) -> None:
    for n, (case, (line, request_id, code)) in enumerate(HOSTILE.items()):
        server.send(line)
        reply = server.reply()
        assert reply["jsonrpc"] == "2.0" and "result" not in reply, (case, reply)
        assert reply["id"] == request_id, (case, reply)
        assert reply["error"]["code"] == code, (case, reply)
        assert reply["error"]["message"].startswith(("parse error", "invalid request")), (case, reply)
        assert server.request(100 + n, "ping") == {"jsonrpc": "2.0", "id": 100 + n, "result": {}}, case


def test_arguments_nested_just_under_the_limit_get_an_ordinary_invalid_answer(server: RawServer) -> None:
    reply = server.request(21, "tools/call", {"name": "send_message", "arguments": {
        "to": "conductor", "body": "x", "extra": nested(150)}})
    assert reply["id"] == 21 and reply["result"]["isError"] is True, reply
    assert reply["result"]["content"][0]["text"].startswith("invalid:"), reply


def tt(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


BAD_URLS = {
    "redis://localhost:99999": "Port out of range",
    "redis://:pw-secret-1@localhost:99999/0": "Port out of range",
    "redis://localhost:abc": "could not be cast",
    "unix:///tmp/x.sock?colour=blue": "unknown query parameter 'colour'",
    "redis://localhost/0?db=x": "Invalid value for 'db'",
    "unix://": "names no socket path",
    "http://localhost:6379": "must be a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://",
}


@pytest.mark.parametrize("url", list(BAD_URLS))
def test_a_bad_redis_url_is_an_invalid_config_error_not_an_unexpected_one(
    tt_env: dict[str, str], url: str
) -> None:
    for via_file in (False, True):
        env = dict(tt_env)
        root = Path(env["TINYTOWN_TOWN"])
        config = root / "tinytown.toml"
        original = config.read_text()
        if via_file:
            env.pop("REDIS_URL")
            config.write_text(original + f'\n[redis]\nurl = "{url}"\n')
        else:
            env["REDIS_URL"] = url
        try:
            for command in (["status"], ["status", "--json"]):
                done = tt(*command, env=env)
                assert done.returncode == 1, done
                line = done.stderr.strip()
                assert line.startswith("tt: invalid: ") and "\n" not in line, line
                assert BAD_URLS[url] in line and "unexpected" not in line, line
                assert "pw-secret-1" not in line
            served = subprocess.run([str(SCRIPT)], env=env, input="", capture_output=True,
                                    text=True, timeout=60, check=False)
            assert served.returncode == 1
            assert served.stderr.strip().splitlines()[-1].startswith("tinytown-mcp: invalid: ")
            assert "pw-secret-1" not in served.stderr
        finally:
            config.write_text(original)


def test_tt_agent_run_with_a_path_for_a_name_touches_no_file(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    (root / "yarn.lock").write_text("lockfile v1\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for name in ("../../yarn", "../run/x", "a/b", "..", "/etc/passwd", "Alice Smith", "x" * 40, "ok\nno"):
        done = tt("agent", "run", name, env=tt_env)
        assert done.returncode == 1, (name, done)
        assert done.stderr.startswith("tt: invalid: agent name"), (name, done.stderr)
    assert (root / "yarn.lock").read_text() == "lockfile v1\n"
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.parametrize("command", [
    ["spawn", "../../yarn", "--cli", "scripted"],
    ["inbox", "../x"],
    ["kill", "a/b"],
    ["send", "../x", "hello"],
    ["task", "show", "../../x"],
    ["task", "show", "x}:agent:*"],
    ["task", "done", "a b", "result"],
    ["mcp", "config", "--agent", "../../x"],
])
def test_a_name_or_id_with_path_or_key_syntax_is_refused_as_invalid(
    tt_env: dict[str, str], command: list[str]
) -> None:
    done = tt(*command, env=tt_env)
    assert done.returncode in (1, 2), done
    # a task reference is looked up by number, id or prefix, never used as a key: not_found
    expected = ("invalid", "not_found") if command[0] == "task" else ("invalid",)
    assert any(code in done.stderr for code in expected), done.stderr
    assert "unexpected" not in done.stderr, done.stderr


def test_the_mcp_server_refuses_an_identity_that_is_a_path(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    served = subprocess.run([str(SCRIPT), "--agent", "../../evil"], env=tt_env, input="",
                            capture_output=True, text=True, timeout=60, check=False)
    assert served.returncode == 1 and "invalid: agent name" in served.stderr
    assert not (root / "evil.log").exists() and not list(root.glob("**/*evil*"))


def test_every_agent_path_builder_refuses_a_name_that_is_not_an_agent_name(tmp_path: Path) -> None:
    paths = TownPaths(tmp_path)
    for build in (lambda n: lock_path(paths, n), lambda n: runner_log_path(paths, n),
                  lambda n: round_log_path(paths, n, 1), lambda n: mcp_config_path(paths, n)):
        for name in ("../../yarn", "a/b", "", ".hidden", "UPPER"):
            with pytest.raises(Invalid):
                build(name)
        assert build("alice").parent.is_relative_to(tmp_path / ".tt")


def test_a_preset_name_with_path_syntax_is_refused_in_tinytown_toml(tt_env: dict[str, str]) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    with (root / "tinytown.toml").open("a") as f:
        f.write('\n[agent_clis."../evil"]\ncommand = ["true"]\n')
    done = tt("status", env=clean_env() | {"TINYTOWN_TOWN": str(root), "REDIS_URL": tt_env["REDIS_URL"]})
    assert done.returncode == 1 and "tt: invalid:" in done.stderr and "preset name" in done.stderr
