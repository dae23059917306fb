"""Scale benchmark (issue 9): does what a listing costs follow the page, not the total?

    python bench/scale.py [-n 25] [--json]

Starts a private redis-server (unix socket, no persistence) in a temp dir, never the
machine's Redis, and builds two towns on it:

* **small**: 1k tasks, 10 agents (+ the conductor), 100 messages in bob's inbox;
* **large**: 100k tasks, 1000 agents, 100k messages in bob's inbox.

Both are filled the fast way: tasks with ``Town.add_tasks`` (a few hundred per round
trip), then bob claims and completes some of them (small: 60, large: 2000, so his history
is 33x longer) and keeps 5 running.  Then it measures, in the same run and interleaved
(small, large, small, ...), the p50 of ``town_status``, ``list_tasks`` (all; by agent and
state for a running and a completed state; a deep cursor near the oldest task),
``list_agents``, ``receive``, ``claim_task`` and the ``tt status`` / ``tt tasks``
commands (cold processes), and prints the ratio large/small: the floor is the small town,
measured in the same run.  Pages are the same size in both towns (10 agents, 50 tasks), so
a ratio near 1 means the cost follows the page; the target is <= 1.5 for every operation
that returns a page.

It also prints the bytes one pending 100-byte message costs (``used_memory`` grown while
the large town's 100k messages were sent, divided by 100k) and what one completed task
costs (its record and index entries, and with the ``task_done`` notice it leaves in the
creator's inbox).  It asserts nothing: a benchmark reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from redis import Redis as SyncRedis
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinytown.bulk import TaskSpec  # noqa: E402
from tinytown.config import TownConfig  # noqa: E402
from tinytown.town import Town  # noqa: E402

SIZES = {
    "small": {"tasks": 1_000, "agents": 10, "messages": 100, "history": 60},
    "large": {"tasks": 100_000, "agents": 1_000, "messages": 100_000, "history": 2_000},
}
RUNNING = 5
AGENT_PAGE = 10
TASK_PAGE = 50
BODY = "m" * 100
PAGED = {"town_status", "list_tasks all", "list_tasks bob running", "list_tasks bob completed",
         "list_tasks deep cursor", "list_agents", "tt status", "tt tasks"}


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    sock = str(directory / "redis.sock")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--dir", str(directory),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # start-up has no event to wait on: bounded readiness probe
        try:
            if SyncRedis(unix_socket_path=sock, socket_timeout=1).ping():
                return proc, sock
        except Exception:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not answer within 10 s")


async def concurrently(count: int, work: Callable[[int], Awaitable[object]], width: int = 16) -> None:
    """``work(i)`` for i in range(count), ``width`` at a time."""
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await work(i)

    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(worker)


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def build(sock: str, root: Path, label: str) -> tuple[Town, dict[str, Any]]:
    size = SIZES[label]
    name = f"bench{label}"
    directory = root / label
    directory.mkdir()
    (directory / "tinytown.toml").write_text(
        f'name = "{name}"\nmax_agents = {size["agents"] + 10}\n[limits]\nmax_inbox = 200000\n'
    )
    config = TownConfig.model_validate({"name": name, "max_agents": size["agents"] + 10,
                                        "limits": {"max_inbox": 200_000}})
    town = Town(Redis(unix_socket_path=sock, decode_responses=True, socket_timeout=None,
                      max_connections=64), config)
    await town.ensure_conductor()
    started = time.monotonic()
    await town.register_agent("bob")
    await town.register_agent("carol")
    await concurrently(size["agents"] - 2, lambda i: town.register_agent(f"a{i}"))
    await town.add_tasks([TaskSpec(description=f"task {i} of the {label} town")
                          for i in range(size["tasks"])])
    deep = (await town.list_tasks(limit=TASK_PAGE + 10, oldest_first=True)).tasks[-1].number

    async def history(_i: int) -> None:
        task = await town.claim("bob")
        await town.complete_task(task.id, "done", by="bob")

    await concurrently(size["history"], history)
    for _ in range(RUNNING):
        await town.claim("bob")
    before = await used_memory(town.redis)
    await concurrently(size["messages"], lambda _i: town.send("conductor", "bob", BODY), width=32)
    per_message = (await used_memory(town.redis) - before) / size["messages"]
    cursor = str(int(await town.redis.hget(town.keys.task(
        await town.resolve_task(f"#{deep}")), "seq")))
    facts = {"per_message": per_message, "deep_cursor": cursor, "dir": directory,
             "built_s": time.monotonic() - started}
    return town, facts


async def task_bytes(town: Town) -> tuple[float, float]:
    """(record and indexes, with the notice) per completed task, over 200 tasks."""
    await town.register_agent("meter")
    before = await used_memory(town.redis)
    for _ in range(200):
        task = await town.claim("meter")
        await town.complete_task(task.id, "done", by="meter")
    after = await used_memory(town.redis)
    conductor = await town.get_agent("conductor")
    notices = 0
    for priority in ("urgent", "high", "normal", "low"):
        for mid in await town.redis.lrange(town.keys.inbox(conductor.id, priority), -200, -1):
            notices += int(await town.redis.memory_usage(town.keys.message(mid)) or 0) + 10
    return (after - before - notices) / 200, (after - before) / 200


def tt_command(args: list[str], directory: Path, sock: str) -> Callable[[], Awaitable[object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYTOWN_", "REDIS_URL"))}
    env.update(TINYTOWN_TOWN=str(directory), REDIS_URL=f"unix://{sock}", TINYTOWN_AGENT="conductor")

    async def call() -> object:
        done = await anyio.run_process([sys.executable, "-m", "tinytown.cli.main", *args], env=env,
                                       check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tt {' '.join(args)} failed: {done.stderr.decode()}")
        return done

    return call


def operations(town: Town, facts: dict[str, Any], sock: str) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "town_status": lambda: town.status(limit=AGENT_PAGE),
        "list_tasks all": lambda: town.list_tasks(limit=TASK_PAGE),
        "list_tasks bob running": lambda: town.list_tasks(agent="bob", state="running", limit=TASK_PAGE),
        "list_tasks bob completed": lambda: town.list_tasks(agent="bob", state="completed",
                                                            limit=TASK_PAGE),
        "list_tasks deep cursor": lambda: town.list_tasks(cursor=facts["deep_cursor"], limit=TASK_PAGE),
        "list_agents": lambda: town.agents_page(limit=AGENT_PAGE),
        "receive": lambda: town.receive("bob", timeout_s=0, max_messages=1, session="bench"),
        "claim_task": lambda: town.claim("carol"),
        "tt status": tt_command(["status", "--limit", str(AGENT_PAGE)], facts["dir"], sock),
        "tt tasks": tt_command(["tasks", "--limit", str(TASK_PAGE)], facts["dir"], sock),
    }


async def measure(towns: dict[str, tuple[Town, dict[str, Any]]], sock: str, samples: int,
                  cli_samples: int) -> dict[str, dict[str, float]]:
    ops = {label: operations(town, facts, sock) for label, (town, facts) in towns.items()}
    times: dict[str, dict[str, list[float]]] = {label: {op: [] for op in ops[label]} for label in ops}
    for op in ops["small"]:
        count = cli_samples if op.startswith("tt ") else samples
        for i in range(count + 1):
            for label in ("small", "large") if i % 2 == 0 else ("large", "small"):
                started = time.perf_counter()
                await ops[label][op]()
                if i:  # the first call of each warms caches (script load, clock)
                    times[label][op].append((time.perf_counter() - started) * 1000)
    return {label: {op: statistics.median(v) for op, v in by_op.items()} for label, by_op in times.items()}


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ttscale") as tmp:
        root = Path(tmp)
        proc, sock = start_redis(root)
        try:
            floor = Redis(unix_socket_path=sock, decode_responses=True)
            pings = []
            for _ in range(200):
                started = time.perf_counter()
                await floor.ping()
                pings.append((time.perf_counter() - started) * 1000)
            towns = {label: await build(sock, root, label) for label in ("small", "large")}
            p50 = await measure(towns, sock, args.samples, args.cli_samples)
            task_record, task_with_notice = await task_bytes(towns["large"][0])
            for town, _facts in towns.values():
                await town.redis.aclose()
            await floor.aclose()
        finally:
            proc.terminate()
            proc.wait()
    small, large = SIZES["small"], SIZES["large"]
    print(f"scale bench: small = {small['tasks']} tasks, {small['agents']} agents, {small['messages']} "
          f"inbox messages; large = {large['tasks']} tasks, {large['agents']} agents, "
          f"{large['messages']} inbox messages")
    print(f"pages: {AGENT_PAGE} agents, {TASK_PAGE} tasks; bob's history {small['history']} vs "
          f"{large['history']} completed tasks; floor: redis PING p50 {statistics.median(pings):.3f} ms")
    print(f"built in {towns['small'][1]['built_s']:.0f} s and {towns['large'][1]['built_s']:.0f} s; "
          f"p50 of {args.samples} calls ({args.cli_samples} for tt commands), interleaved")
    print(f"{'operation':28} {'small ms':>10} {'large ms':>10} {'ratio':>7}  target")
    ratios: dict[str, float] = {}
    for op in p50["small"]:
        ratio = p50["large"][op] / p50["small"][op]
        ratios[op] = ratio
        target = "<= 1.5" if op in PAGED else "-"
        mark = "" if op not in PAGED else ("  ok" if ratio <= 1.5 else "  OVER")
        print(f"{op:28} {p50['small'][op]:10.3f} {p50['large'][op]:10.3f} {ratio:6.2f}x  {target}{mark}")
    per_message = towns["large"][1]["per_message"]
    print(f"bytes per pending 100-byte message: {per_message:.0f} B (goal <= 450 B; used_memory grown "
          f"while the large town's {large['messages']} messages were sent)")
    print(f"bytes per completed task: {task_record:.0f} B (record + indexes), {task_with_notice:.0f} B "
          "with the task_done notice it leaves in the creator's inbox")
    if args.json:
        print(json.dumps({"p50_ms": p50, "ratios": ratios, "bytes_per_message": per_message,
                          "bytes_per_task": task_record, "bytes_per_task_with_notice": task_with_notice}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--samples", type=int, default=25)
    parser.add_argument("--cli-samples", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    anyio.run(main, parser.parse_args())
