"""The built-in ``scripted`` preset: a deterministic agent that is a real MCP client.

``python -m tinytown_mcp.scripted_agent`` is what a runner starts for an agent spawned with
``--cli scripted`` (``tt demo`` and the tests use it, so no AI CLI is needed).  Each round it:

1. reads the MCP client config named by ``TINYTOWN_MCP_CONFIG`` (the ``.mcp.json`` format
   the runner generates) and starts that ``tinytown-mcp`` server over stdio;
2. takes the round's messages from the prompt on stdin (they stay in flight with the runner:
   the round's session joined the runner's, see :mod:`tinytown.runner`) and calls
   ``receive`` once for anything newer;
3. does each task's small job: evaluates an arithmetic expression (``"(17 - 5) * 3"``), else
   counts and reverses the words; a description starting with ``fail:`` is reported failed;
   ``write FILE: TEXT`` appends TEXT to FILE in its working directory (``tt demo --worktree``);
4. reports it with ``task_done`` / ``task_failed``, answers each ``query`` with
   ``send_message(reply_to=...)``, tells its peers in an ``info`` message, acknowledges the
   rest with ``ack`` and exits 0.

Peers: ``--peer NAME`` (repeatable) or ``TINYTOWN_SCRIPTED_PEERS`` (comma-separated, empty
for nobody); by default the other live agents that run the ``scripted`` preset.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from tinytown.mcp_config import env_reference

TASK_ID_RE = re.compile(r"^task id: (\S+)", re.MULTILINE)
MESSAGE_RE = re.compile(r"^--- message \d+ of \d+ ---$|^--- end of messages ---$", re.MULTILINE)
HEADER_RE = re.compile(r"^(message id|from|kind|priority|task id|in reply to): (\S+)")
PEERS_ENV = "TINYTOWN_SCRIPTED_PEERS"

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


class ToolFailed(Exception):
    """A tool answered ``isError``; the text starts with the Tinytown error code."""


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right))  # type: ignore[no-any-return]
    raise ValueError("not simple arithmetic")


WRITE_RE = re.compile(r"^write ([\w./-]+): (.*)$", re.DOTALL)


def work(description: str) -> tuple[bool, str]:
    """The deterministic job: ``(ok, result or error)``."""
    text = description.strip()
    if text.lower().startswith("fail:"):
        return False, text[5:].strip() or "asked to fail"
    write = WRITE_RE.match(text)
    if write:  # "write FILE: TEXT" appends a line to FILE under the current directory
        target = Path(write.group(1))
        if target.is_absolute() or ".." in target.parts:
            return False, f"{target} is outside the working directory"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as out:
            out.write(write.group(2).strip() + "\n")
        return True, f"wrote {target}"
    try:
        value = _evaluate(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, RecursionError):
        words = text.split()
        return True, f"{len(words)} words; reversed: {' '.join(reversed(words))}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return True, f"{text} = {value}"


def prompt_messages(prompt: str) -> list[dict[str, Any]]:
    """The messages a round prompt lists (:func:`tinytown.prompting.render_round_prompt`), as
    ``receive`` would return them: ``id``, ``from``, ``kind``, ``task_id``, ``body``."""
    blocks = MESSAGE_RE.split(prompt)[1:-1]
    found = []
    for block in blocks:
        head, _, body = block.strip("\n").partition("\n\n")
        fields: dict[str, Any] = {}
        for line in head.splitlines():
            for part in re.split(r"\s{2,}", line.strip()):
                match = HEADER_RE.match(part)
                if match:
                    fields[match.group(1)] = match.group(2)
        if "message id" in fields:
            found.append({"id": fields["message id"], "from": fields.get("from"),
                          "kind": fields.get("kind"), "task_id": fields.get("task id"),
                          "body": body.strip()})
    return found


def server_parameters(config_path: Path) -> StdioServerParameters:
    """The ``tinytown`` server of a ``.mcp.json`` file, with this process's environment."""
    data = json.loads(config_path.read_text(encoding="utf-8"))
    entry = data["mcpServers"]["tinytown"]
    # Like Claude Code, hand the server our environment plus the entry's env, whose
    # ${VAR} references (the Redis URL, so the file holds no password) come from ours.
    env = dict(os.environ)
    for key, value in (entry.get("env") or {}).items():
        name = env_reference(str(value))
        if name is None:
            env[str(key)] = str(value)
        elif name in os.environ:
            env[str(key)] = os.environ[name]
    return StdioServerParameters(
        command=str(entry["command"]), args=[str(a) for a in entry.get("args", [])], env=env,
    )


async def call(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments or {})
    text = "".join(getattr(block, "text", "") for block in result.content)
    if result.is_error:
        raise ToolFailed(text)
    data = result.structured_content
    if isinstance(data, dict):
        return data
    parsed = json.loads(text)
    return parsed if isinstance(parsed, dict) else {}


class ScriptedAgent:
    """One round of the scripted agent over an open MCP client."""

    def __init__(self, client: Client, peers: Sequence[str] | None) -> None:
        self.client = client
        self.peers = peers
        self.me = ""
        self.failures = 0

    def say(self, line: str) -> None:
        print(f"{self.me or 'scripted'}: {line}", flush=True)

    async def round(
        self, prompt_task_ids: Sequence[str], prompted: Sequence[dict[str, Any]] = ()
    ) -> int:
        me = await call(self.client, "whoami")
        self.me = str(me.get("agent", {}).get("name", ""))
        got = await call(self.client, "receive", {"timeout_s": 0, "max_messages": 100})
        received: list[dict[str, Any]] = list(got.get("messages", []))
        known = {str(m["id"]) for m in received}
        messages = received + [m for m in prompted if m["id"] not in known]
        task_ids: list[str] = []
        to_ack: list[str] = []
        for message in messages:
            mine = str(message["id"]) in known  # the prompt's are the runner's to acknowledge
            if message.get("kind") == "task" and message.get("task_id"):
                task_ids.append(str(message["task_id"]))
            elif message.get("kind") == "query":
                await self.answer(message)
                if mine:
                    to_ack.append(str(message["id"]))
            elif mine:
                to_ack.append(str(message["id"]))
        for task_id in prompt_task_ids:
            if task_id not in task_ids:
                task_ids.append(task_id)
        done: list[str] = []
        for task_id in task_ids:
            line = await self.do_task(task_id)
            if line:
                done.append(line)
        if done:
            await self.tell_peers(done)
        if to_ack:
            await call(self.client, "ack", {"message_ids": to_ack})
        if not task_ids and not messages:
            self.say("nothing to do")
        return 1 if self.failures else 0

    async def do_task(self, task_id: str) -> str | None:
        task = (await call(self.client, "get_task", {"task_id": task_id}))["task"]
        if task.get("state") not in ("assigned", "running"):
            self.say(f"task {task_id} is {task.get('state')}; nothing to do")
            return None
        ok, text = work(str(task.get("description", "")))
        try:
            if ok:
                await call(self.client, "task_done", {"task_id": task_id, "result": text})
                self.say(f"task {task_id} done: {text}")
                return f"finished task {task_id[:8]}: {text}"
            await call(self.client, "task_failed", {"task_id": task_id, "error": text})
            self.say(f"task {task_id} failed: {text}")
            return f"could not do task {task_id[:8]}: {text}"
        except ToolFailed as error:
            self.failures += 1
            self.say(f"task {task_id}: {error}")
            return None

    async def answer(self, message: dict[str, Any]) -> None:
        ok, text = work(str(message.get("body", "")))
        await call(self.client, "send_message", {
            "to": message["from"], "body": text, "kind": "info", "reply_to": message["id"],
        })
        self.say(f"answered {message['from']}: {text}")

    async def tell_peers(self, lines: Sequence[str]) -> None:
        peers = self.peers
        if peers is None:
            listed = await call(self.client, "list_agents")
            peers = [
                a["name"] for a in listed.get("agents", [])
                if a.get("cli") == "scripted" and a.get("name") != self.me
                and a.get("state") not in ("stopped", "error")
            ]
        for peer in peers:
            try:
                await call(self.client, "send_message", {"to": peer, "body": "; ".join(lines)})
                self.say(f"told {peer}")
            except ToolFailed as error:
                self.say(f"could not tell {peer}: {error}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tinytown-scripted-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--peer", action="append", default=None,
                        help=f"tell this agent about finished tasks (default: ${PEERS_ENV}, else the "
                             "other scripted agents)")
    parser.add_argument("--config", type=Path, default=None,
                        help="MCP client config (default: $TINYTOWN_MCP_CONFIG)")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace, prompt: str) -> int:
    config = args.config or (Path(os.environ["TINYTOWN_MCP_CONFIG"])
                             if os.environ.get("TINYTOWN_MCP_CONFIG") else None)
    if config is None:
        print("scripted agent: no MCP config (set TINYTOWN_MCP_CONFIG or pass --config)",
              file=sys.stderr)
        return 2
    peers: list[str] | None = args.peer
    if peers is None and PEERS_ENV in os.environ:
        peers = [p.strip() for p in os.environ[PEERS_ENV].split(",") if p.strip()]
    task_ids = TASK_ID_RE.findall(prompt)
    env_task = os.environ.get("TINYTOWN_TASK_ID")
    if env_task and env_task not in task_ids:
        task_ids.append(env_task)
    async with Client(server_parameters(config)) as client:
        return await ScriptedAgent(client, peers).round(task_ids, prompt_messages(prompt))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    try:
        code = anyio.run(amain, args, prompt)
    except ToolFailed as error:
        print(f"scripted agent: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
