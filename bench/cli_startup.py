"""How long `tt send` takes from a cold process, against a floor measured in the same run.

The floor is the least any Python CLI on the same stack can do for one message: start the
interpreter, import Typer, pydantic and redis-py, and LPUSH once.  `tt send` (run as
``python -m tinytown.cli.main send bob hello``) should stay within 1.5x of it; so should
``tt inbox --count``, which prompt hooks run on every turn.

It starts its own server (as a town's managed one: the embedded Valkey) on a unix socket in a
temp dir (never the machine's Redis), makes a town there with ``REDIS_URL`` pointing at it,
and registers the agent ``bob``.
It prints medians, p99 and the ratios of the wall time (the target's measure), and the
median CPU time each process used (user + system) with its ratio: on a busy machine the wall
times mostly measure waiting for a CPU, the CPU times much less.  It asserts nothing (a
benchmark reports).

    python bench/cli_startup.py [-n 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from tinytown.redis_server import ManagedRedis

ROOT = Path(__file__).resolve().parent.parent


def start_redis(directory: Path) -> tuple[ManagedRedis, str]:
    """The server a town would run (the embedded Valkey, else one on PATH), private to the
    bench: a unix socket in a temp dir, never the machine's Redis."""
    server = ManagedRedis(directory)
    server.ensure_running()
    return server, server.connect_path()


async def register(town_dir: Path, *names: str) -> None:
    from tinytown.town import Town

    town = await Town.open(town_dir)
    try:
        for name in names:
            await town.register_agent(name, exist_ok=True)
    finally:
        await town.close()


def cpu_of_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``."""
    cpu = cpu_of_children()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed, cpu_of_children() - cpu


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tt-bench-", dir="/tmp") as tmp:
        directory = Path(tmp)
        proc, sock = start_redis(directory / "redis")
        try:
            town_dir = directory / "town"
            town_dir.mkdir()
            (town_dir / "tinytown.toml").write_text('name = "bench"\n')
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYTOWN_", "REDIS_URL"))}
            env.update(TINYTOWN_TOWN=str(town_dir), REDIS_URL=f"unix://{sock}")
            # Measure as an installed package runs: with bytecode caches (kept in the temp dir).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
            os.environ.update(TINYTOWN_TOWN=str(town_dir), REDIS_URL=f"unix://{sock}")
            anyio.run(register, town_dir, "bob")

            python = sys.executable
            floor_code = (
                "import typer, pydantic, redis; "
                f"redis.Redis(unix_socket_path={sock!r}).lpush('bench:floor', 'y')"
            )
            cases = {
                "floor (import typer, pydantic, redis + LPUSH)": [python, "-c", floor_code],
                "tt send bob hello": [python, "-m", "tinytown.cli.main", "send", "bob", "hello"],
                "tt inbox bob --count": [python, "-m", "tinytown.cli.main", "inbox", "bob", "--count"],
            }
            for argv in cases.values():  # warm the page cache and write the .pyc files once
                timed(argv, env)
            results: dict[str, list[float]] = {name: [] for name in cases}
            cpu: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.n):  # interleaved, so a burst of load hits every case alike
                for name, argv in cases.items():
                    wall, used = timed(argv, env)
                    results[name].append(wall)
                    cpu[name].append(used)
        finally:
            proc.stop()

    floor = statistics.median(next(iter(results.values())))
    floor_cpu = statistics.median(next(iter(cpu.values())))
    print(
        f"cold-process CLI start-up, n={args.n} each, {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(f"{'command':<48} {'median':>9} {'p99':>9} {'ratio':>7} {'cpu':>9} {'ratio':>7}")
    for name, runs in results.items():
        median = statistics.median(runs)
        used = statistics.median(cpu[name])
        print(f"{name:<48} {median * 1000:7.1f}ms {p99(runs) * 1000:7.1f}ms {median / floor:6.2f}x "
              f"{used * 1000:7.1f}ms {used / floor_cpu:6.2f}x")


if __name__ == "__main__":
    main()
