"""``tt stop``: every runner of the town stops after its round (``--now``: at once).

The runners are ordered through Redis, so runners on other machines stop too; each carries
its order out itself (:mod:`tinytown.orders`).  ``tt down --all`` and ``tt reset --force`` use
the same :meth:`~tinytown.town.Town.stop_all`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from tinytown.cli.app import JsonOption, app, fail, run
from tinytown.cli.lifecycle import (
    NowOption,
    TimeoutOption,
    interrupted_wait,
    show_outcomes,
    show_wait,
    stop_waiting_on_ctrl_c,
)

if TYPE_CHECKING:
    from tinytown.models import Agent
    from tinytown.orders import StopOutcome
    from tinytown.town import Town


@app.command()
def stop(
    ctx: typer.Context,
    now: NowOption = False,
    timeout: TimeoutOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop every agent's runner after its current round (--now: cut the rounds off; their
    tasks go back to the backlog). Waits for them and says what happened to each."""
    stop_waiting_on_ctrl_c("the runners keep their orders and stop after their rounds")
    try:
        outcomes = run(ctx, lambda town: town.stop_all(now=now, timeout_s=timeout, on_wait=show_wait))
    except KeyboardInterrupt:
        raise interrupted_wait("the runners keep their orders and stop after their rounds") from None
    if not outcomes and not json_out:
        from tinytown.cli.render import say

        say("no runner was running")
        return
    show_outcomes(outcomes, json_out)
    if any(o.outcome == "pending" for o in outcomes):
        raise typer.Exit(1)


def runners_stopped_or_refused(
    ctx: typer.Context, command: str, stop_them: bool, now: bool
) -> list[StopOutcome]:
    """Before ``tt down``: with ``--all`` stop every live runner; without, refuse (exit 1)
    naming them, so no runner is left retrying against a server that went away."""

    async def go(town: Town) -> tuple[list[str], list[StopOutcome]]:
        live = await town.live_runners()
        if not live or not stop_them:
            return [_runner_label(a) for a in live], []
        return [], await town.stop_all(now=now, on_wait=show_wait)

    try:
        live, outcomes = run(ctx, go, start_redis=False)
    except KeyboardInterrupt:
        raise interrupted_wait("the runners keep their orders and stop after their rounds") from None
    if live:
        from tinytown.errors import Conflict

        fail(Conflict(f"runners still live: {', '.join(live)}; stop them first (`tt stop`), or "
                      f"`tt {command} --all` to stop them and then the server"))
    return outcomes


def _runner_label(agent: Agent) -> str:
    where = ", ".join(x for x in (f"host {agent.host}" if agent.host else "",
                                  f"pid {agent.pid}" if agent.pid else "") if x)
    return f"{agent.name} ({where})" if where else agent.name
