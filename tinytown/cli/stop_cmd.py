"""``tt stop``: every runner of the town stops after its round (``--now``: at once).

The runners are ordered through Redis, so runners on other machines stop too; each carries
its order out itself (:mod:`tinytown.orders`).  ``tt down --all`` and ``tt reset --force`` use
the same :meth:`~tinytown.town.Town.stop_all`.
"""

from __future__ import annotations

import typer

from tinytown.cli.app import JsonOption, app, run
from tinytown.cli.lifecycle import NowOption, TimeoutOption, interrupted_wait, show_outcomes, show_wait


@app.command()
def stop(
    ctx: typer.Context,
    now: NowOption = False,
    timeout: TimeoutOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop every agent's runner after its current round (--now: cut the rounds off; their
    tasks go back to the backlog). Waits for them and says what happened to each."""
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
