"""``tt logs AGENT [-f] [--round N]``: what a spawned agent's CLI printed, round by round.

Each runner round appends its CLI's output to ``.tt/logs/<agent>.round-<n>.log``
(:func:`tinytown.processes.round_logs` knows the names); numbers are never reused, so a
crashed round's log stays as it was.  ``--follow`` prints what is added, and moves on to a
newer round's log when one starts; it wakes on the town's event stream (every round start
and end is an event) and at least once a second, never by sleeping.
"""

import codecs
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

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
    from tinytown.errors import Invalid, NotFound
    from tinytown.models import AGENT_NAME_RE, normalise_agent_name

    name = normalise_agent_name(agent)
    if not AGENT_NAME_RE.match(name):
        fail(Invalid(f"{agent!r} is not an agent name"))

    async def go(town: "Town") -> None:
        from tinytown.processes import round_logs

        await town.get_agent(name)  # not_found for an unknown agent
        if town.paths is None:
            raise Invalid("round logs live in a town directory; this town has none")
        rounds = round_logs(town.paths, name)
        if round_number is not None and round_number not in rounds:
            have = ", ".join(str(n) for n in rounds) or "none yet"
            raise NotFound(f"{name} has no round {round_number} (rounds with a log: {have})")
        if not rounds and not follow:
            raise NotFound(f"{name} has not run a round yet (no {name}.round-N.log in {town.paths.logs})")
        chosen = round_number if round_number is not None else max(rounds, default=0)
        if json_out:
            path = rounds[chosen]
            print_json({"agent": name, "round": chosen, "path": str(path), "rounds": list(rounds),
                        "text": path.read_bytes().decode("utf-8", errors="replace")})
            return
        await _show(town, town.paths, name, chosen, follow=follow, only=round_number is not None)

    try:
        run(ctx, go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _show(town: "Town", paths: "TownPaths", name: str, first: int, *, follow: bool, only: bool) -> None:
    """Print round ``first`` (0: wait for the first round); with ``follow``, keep printing
    what is appended and, unless ``only``, each newer round as it starts."""
    from tinytown.processes import round_logs

    current = first
    tail = _Tail(round_logs(paths, name).get(current)) if current else None
    if tail is not None:
        _header(name, current, tail.path)
        tail.pump()
    if not follow:
        return
    last = await town.last_event_id()
    while True:
        events = await town.wait_events(last, FOLLOW_TICK_S)
        if events:
            last = events[-1].id
        if tail is not None:
            tail.pump()
        if only:
            continue
        newest = max(round_logs(paths, name), default=0)
        if newest > current:
            if tail is not None:
                tail.pump()
            current = newest
            tail = _Tail(round_logs(paths, name)[current])
            _header(name, current, tail.path)
            tail.pump()


def _header(name: str, number: int, path: Path) -> None:
    sys.stdout.write(f"=== {name} round {number} ({path}) ===\n")
    sys.stdout.flush()


class _Tail:
    """Prints what is appended to one file, decoding UTF-8 across chunk boundaries."""

    def __init__(self, path: Path | None) -> None:
        assert path is not None
        self.path = path
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def pump(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        if chunk:
            self.offset += len(chunk)
            sys.stdout.write(self.decoder.decode(chunk))
            sys.stdout.flush()
