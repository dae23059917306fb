"""``tt logs AGENT [-f] [--round N]``: what a spawned agent's CLI printed, round by round.

Reading the logs is :mod:`tinytown.roundlog` (the dashboard shows them too).  ``--follow``
prints what is added, and moves on to a newer round's log when one starts; it wakes on the
town's event stream (every round start and end is an event) and at least once a second,
never by sleeping.
"""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tinytown.channel import stop_if_cancelled
from tinytown.cli.app import JsonOption, app, fail, print_json, run

if TYPE_CHECKING:
    from tinytown.config import TownPaths
    from tinytown.town import Town

FOLLOW_TICK_S = 1.0


@app.command()
def logs(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="The spawned agent whose rounds to show.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing output as it is written, round after round.")
    ] = False,
    round_number: Annotated[
        int | None, typer.Option("--round", "-r", help="This round (default: the newest).", min=1)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """A spawned agent's round output (.tt/logs/AGENT.round-N.log): the newest round, or --round N."""
    from tinytown.errors import Invalid
    from tinytown.models import AGENT_NAME_RE, normalise_agent_name

    if not AGENT_NAME_RE.match(normalise_agent_name(agent)):
        fail(Invalid(f"{agent!r} is not an agent name"))

    async def go(town: "Town") -> None:
        from tinytown.roundlog import choose_round

        choice = await choose_round(town, agent, round_number, none_yet_ok=follow)
        if json_out and not follow:
            assert choice.path is not None
            print_json({"agent": choice.agent, "round": choice.round, "path": str(choice.path),
                        "rounds": list(choice.rounds),
                        "text": choice.path.read_bytes().decode("utf-8", errors="replace")})
            return
        await _show(town, choice.paths, choice.agent, choice.round, follow=follow,
                    only=round_number is not None, json_lines=json_out)

    try:
        run(ctx, go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _show(town: "Town", paths: "TownPaths", name: str, first: int, *, follow: bool, only: bool,
                json_lines: bool = False) -> None:
    """Print round ``first`` (0: wait for the first round); with ``follow``, keep printing
    what is appended and, unless ``only``, each newer round as it starts.  ``json_lines``:
    each piece of output as one JSON line ``{"agent", "round", "path", "text"}`` instead of
    the text under a header per round."""
    from tinytown.processes import round_logs
    from tinytown.roundlog import LogTail, newest_round

    def show(number: int, path: Path, text: str, *, starts: bool = False) -> None:
        if json_lines:
            if text:
                _write(json.dumps({"agent": name, "round": number, "path": str(path), "text": text}) + "\n")
            return
        if starts:
            _write(f"=== {name} round {number} ({path}) ===\n")
        _write(text)

    current = first
    tail = LogTail(round_logs(paths, name)[current]) if current else None
    if tail is not None:
        show(current, tail.path, tail.read(), starts=True)
    if not follow:
        return
    last = await town.last_event_id()
    while True:
        stop_if_cancelled()
        events = await town.wait_events(last, FOLLOW_TICK_S)
        if events:
            last = events[-1].id
        if tail is not None:
            show(current, tail.path, tail.read())
        if only:
            continue
        newest = newest_round(paths, name)
        if newest > current:
            if tail is not None:
                show(current, tail.path, tail.read())
            current = newest
            tail = LogTail(round_logs(paths, name)[current])
            show(current, tail.path, tail.read(), starts=True)


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
