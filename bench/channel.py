"""Channel benchmark: Tinytown against raw redis-py doing the same Redis round trips.

    python bench/channel.py [--hops 400] [--messages 20000] [--agents 50]

Runs on a managed redis-server it starts in a temp dir (AOF everysec, unix socket: the
town's default), in separate processes for sender and receiver, and prints absolute
figures plus ratios against the floor measured in the same run:

* **hop**: one message, send starts → the receiver's *blocked* receive returns it (with
  the implicit ack of the previous one).  Tinytown: one EVALSHA to send; the receiver is
  parked in BLPOP on its bell, wakes, one EVALSHA pops, marks in flight and acks.  Floor:
  one pipelined RPUSH + LPUSH bell + XADD to send; BLPOP bell, one pipelined LPOP + ZADD.
  Timestamps are CLOCK_MONOTONIC, shared by processes on one Linux machine.
  The two kinds of hop alternate, so both see the same load.
* **throughput**: 50 agents, each with a receive loop in one process; 50 senders in
  another; messages per second until all arrived.

Targets (issue 2): hop p50 ≤ 1.5× the floor; throughput ≥ 0.5× the floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinytown.config import TownConfig  # noqa: E402
from tinytown.redis_server import ManagedRedis  # noqa: E402
from tinytown.town import Town  # noqa: E402


def client(sock: str) -> Redis:
    return Redis(unix_socket_path=sock, decode_responses=True, socket_timeout=None,
                 max_connections=200)


# ----------------------------------------------------------------- receivers (child process)

async def receive_tinytown(sock: str, town_name: str, agents: list[str], total: int, report: str) -> None:
    r = client(sock)
    town = Town(r, TownConfig(name=town_name))
    got = 0
    done = anyio.Event()

    async def loop(agent: str) -> None:
        nonlocal got
        while not done.is_set():
            batch = await town.receive(agent, timeout_s=5, max_messages=10)
            now = time.monotonic_ns()
            for m in batch.messages:
                got += 1
                if total == 0:  # hop mode: report each latency
                    await r.rpush(report, now - int(m.body))
            if total and got >= total:
                await r.rpush(report, str(now))
                done.set()

    await r.rpush(report, "ready")
    async with anyio.create_task_group() as tg:
        for agent in agents:
            tg.start_soon(loop, agent)
        if total == 0:
            await anyio.sleep_forever()


async def receive_raw(sock: str, prefix: str, agents: list[str], total: int, report: str) -> None:
    r = client(sock)
    got = 0
    done = anyio.Event()

    async def loop(agent: str) -> None:
        nonlocal got
        while not done.is_set():
            async with r.pipeline(transaction=False) as p:
                p.lpop(f"{prefix}inbox:{agent}", 10)
                p.zadd(f"{prefix}inflight:{agent}", {"x": 1})
                items, _ = await p.execute()
            if not items:
                await r.blpop([f"{prefix}bell:{agent}"], timeout=5)
                continue
            now = time.monotonic_ns()
            for body in items:
                got += 1
                if total == 0:
                    await r.rpush(report, now - int(json.loads(body)["body"]))
            if total and got >= total:
                await r.rpush(report, str(now))
                done.set()

    await r.rpush(report, "ready")
    async with anyio.create_task_group() as tg:
        for agent in agents:
            tg.start_soon(loop, agent)
        if total == 0:
            await anyio.sleep_forever()


# ----------------------------------------------------------------- senders (parent process)

async def raw_send(r: Redis, prefix: str, agent: str, body: str) -> None:
    payload = json.dumps({"id": str(uuid.uuid4()), "from": "alice", "to": agent, "kind": "info",
                          "body": body, "priority": "normal"})
    async with r.pipeline(transaction=False) as p:
        p.rpush(f"{prefix}inbox:{agent}", payload)
        p.lpush(f"{prefix}bell:{agent}", "1")
        p.ltrim(f"{prefix}bell:{agent}", 0, 0)
        p.xadd(f"{prefix}events", {"type": "message.sent"}, maxlen=10000, approximate=True)
        await p.execute()


def start_receiver(
    mode: str, sock: str, name: str, agents: list[str], total: int, report: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--child", mode, sock, name, ",".join(agents),
                             str(total), report])


async def hops_interleaved(sock: str, hops: int) -> dict[str, list[int]]:
    """Both receivers parked at once; hops alternate raw / tinytown so that both see the
    same machine load (2 cores, other work running) instead of one phase each."""
    r = client(sock)
    name = f"bench{uuid.uuid4().hex[:8]}"
    town = Town(r, TownConfig(name=name))
    await town.ensure_conductor()
    await town.register_agent("alice")
    await town.register_agent("bob")
    prefix = f"raw:{name}:"
    reports = {"raw": f"bench:{name}:raw", "tinytown": f"bench:{name}:tt"}
    children = [
        start_receiver("raw", sock, prefix, ["bob"], 0, reports["raw"]),
        start_receiver("tinytown", sock, name, ["bob"], 0, reports["tinytown"]),
    ]
    try:
        for report in reports.values():
            assert (await r.blpop([report], timeout=30))[1] == "ready"
        lat: dict[str, list[int]] = {"raw": [], "tinytown": []}
        for i in range(hops + 20):
            for mode in ("raw", "tinytown"):
                await anyio.sleep(0.002)  # let the receiver park in BLPOP again
                t0 = time.monotonic_ns()
                if mode == "tinytown":
                    await town.send("alice", "bob", str(t0))
                else:
                    await raw_send(r, prefix, "bob", str(t0))
                reply = await r.blpop([reports[mode]], timeout=30)
                if i >= 20:  # warm-up
                    lat[mode].append(int(reply[1]))
        return lat
    finally:
        for child in children:
            child.terminate()
            child.wait()
        await town.reset()
        await r.aclose()


async def throughput(mode: str, sock: str, messages: int, n_agents: int) -> float:
    r = client(sock)
    name = f"bench{uuid.uuid4().hex[:8]}"
    report = f"bench:{name}:report"
    town = Town(r, TownConfig.model_validate({"name": name, "max_agents": n_agents + 1}))
    await town.ensure_conductor()
    await town.register_agent("alice")
    agents = [f"a{i}" for i in range(n_agents)]
    for a in agents:
        await town.register_agent(a)
    prefix = f"raw:{name}:"
    child = start_receiver(mode, sock, name if mode == "tinytown" else prefix, agents, messages, report)
    try:
        assert (await r.blpop([report], timeout=30))[1] == "ready"
        start = time.monotonic_ns()

        async def sender(k: int) -> None:
            for i in range(k, messages, n_agents):
                agent = agents[i % n_agents]
                if mode == "tinytown":
                    await town.send("alice", agent, "x")
                else:
                    await raw_send(r, prefix, agent, json.dumps(0))

        async with anyio.create_task_group() as tg:
            for k in range(n_agents):
                tg.start_soon(sender, k)
        end = int((await r.blpop([report], timeout=120))[1])
        return messages / ((end - start) / 1e9)
    finally:
        child.terminate()
        child.wait()
        await town.reset()
        await r.aclose()


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ttb") as tmp:
        server = ManagedRedis(Path(tmp) / ".tt")
        server.ensure_running()
        sock = server.connect_path()
        try:
            results: dict[str, Any] = {}
            for mode, lat in (await hops_interleaved(sock, args.hops)).items():
                results[f"hop_{mode}"] = {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                                          "mean_ms": statistics.mean(lat) / 1e6}
            for mode in ("raw", "tinytown"):
                results[f"tput_{mode}"] = await throughput(mode, sock, args.messages, args.agents)
        finally:
            server.stop()
    hr, ht = results["hop_raw"], results["hop_tinytown"]
    ratio_hop = ht["p50_ms"] / hr["p50_ms"]
    ratio_tput = results["tput_tinytown"] / results["tput_raw"]
    print(f"hop latency (send -> blocked receive returns), {args.hops} hops, cross-process:")
    print(f"  raw redis-py floor  p50 {hr['p50_ms']:.3f} ms  p99 {hr['p99_ms']:.3f} ms")
    print(f"  tinytown            p50 {ht['p50_ms']:.3f} ms  p99 {ht['p99_ms']:.3f} ms")
    print(f"  ratio p50 {ratio_hop:.2f}x  (target <= 1.5x)   ratio p99 {ht['p99_ms'] / hr['p99_ms']:.2f}x")
    print(f"throughput, {args.agents} agents, {args.messages} messages, sender and receiver processes:")
    print(f"  raw redis-py floor  {results['tput_raw']:.0f} msg/s")
    print(f"  tinytown            {results['tput_tinytown']:.0f} msg/s")
    print(f"  ratio {ratio_tput:.2f}x  (target >= 0.5x)")
    if args.json:
        print(json.dumps({**results, "ratio_hop_p50": ratio_hop, "ratio_throughput": ratio_tput}))


def child_main(argv: list[str]) -> None:
    mode, sock, name, agents, total, report = argv
    fn = receive_tinytown if mode == "tinytown" else receive_raw
    anyio.run(fn, sock, name, agents.split(","), int(total), report)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hops", type=int, default=400)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    anyio.run(main, parser.parse_args())
