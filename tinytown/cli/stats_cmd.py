"""``tt stats [--json] [--sample N | --exact]``: keys, memory and growth per kind of key,
and the retention settings (see :mod:`tinytown.retention`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tinytown.cli.app import JsonOption, app, print_json, run

if TYPE_CHECKING:
    from tinytown.retention import KindStats, TownStats
    from tinytown.town import Town


@app.command()
def stats(
    ctx: typer.Context,
    sample: Annotated[
        int, typer.Option("--sample", min=1, max=100_000,
                          help="Measure MEMORY USAGE on at most this many keys per kind.")
    ] = 200,
    exact: Annotated[bool, typer.Option("--exact", help="Measure every key (slower on a big town).")] = False,
    json_out: JsonOption = False,
) -> None:
    """What the town stores: keys, memory and growth per kind, and how long things are kept."""

    async def go(town: Town) -> TownStats:
        return await town.retention.stats(sample=0 if exact else sample)

    result = run(ctx, go)
    if json_out:
        print_json(result)
        return
    from tinytown.cli.render import Table, show

    table = Table(["kind", "keys", "memory", "keys/day", "memory/day"])
    for name, row in [*result.kinds.items(), ("total", result.total)]:
        table.rows.append([name, str(row.keys), _size(row.bytes, row), _rate(row.keys_per_day),
                           _rate(row.bytes_per_day, size=True)])
    r = result.retention
    tasks = f"{result.records['tasks']} tasks ({result.records['finished_tasks']} finished)"
    lines: list[str | Table] = [
        table,
        f"{tasks}, {result.records['events']} events, {result.records['agents']} agents",
        f"retention: finished tasks {_period(r.tasks)}, acknowledged messages {_period(r.messages)}, "
        f"events {_period(r.events)}",
    ]
    if result.used_memory is not None:
        lines.append(f"server used_memory: {_bytes(result.used_memory)} (every town and key on it)")
    if result.growth_since is None:
        lines.append("growth: measured from the next `tt stats` on (a snapshot was stored now)")
    else:
        age = max(0, result.now - result.growth_since) // 1000
        lines.append(f"growth: per day, extrapolated from the change over the last {age} s "
                     "(the snapshot is renewed hourly)")
    show(lines)


def _size(value: int | None, row: KindStats) -> str:
    if value is None:
        return "-"
    return _bytes(value) + ("" if row.sampled >= row.keys else " ~")


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _rate(value: float | None, *, size: bool = False) -> str:
    if value is None:
        return "-"
    sign = "+" if value >= 0 else "-"
    return sign + (_bytes(abs(value)) if size else f"{abs(value):.0f}")


def _period(seconds: int) -> str:
    if seconds == 0:
        return "kept forever"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
