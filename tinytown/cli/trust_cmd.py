"""``tt trust``: allow the presets and ``env`` of this town's ``tinytown.toml`` to run.

No Redis: trust is the user's, kept in their config directory (see :mod:`tinytown.trust`).
"""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from tinytown.cli.app import JsonOption, app, print_json, run_plain, state


@app.command()
def trust(
    ctx: typer.Context,
    revoke: Annotated[bool, typer.Option("--revoke", help="Forget this file's trust instead.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Trust this town's tinytown.toml as it is now: its presets and env may run.

    Read the file first: its [agent_clis] presets run commands on `tt spawn`. Any later edit
    of the file needs `tt trust` again.
    """
    from tinytown.cli.render import say
    from tinytown.config import TownPaths, find_town_root
    from tinytown.trust import forget, trust_town

    paths = TownPaths(run_plain(lambda: find_town_root(state(ctx).town)))
    if revoke:
        dropped = forget(paths.config)
        if json_out:
            print_json({"file": str(paths.config), "revoked": dropped})
        else:
            say(f"{'no longer trusted' if dropped else 'was not trusted'}: {paths.config}")
        return
    report = run_plain(lambda: trust_town(paths))
    for name in report.overrides:
        typer.echo(
            f"tt: warning: preset {name!r} in {report.file} REPLACES the built-in {name!r} preset", err=True
        )
    if json_out:
        print_json(report)
        return
    say(f"trusted {report.file} ({report.digest[:19]}...)")
    if not report.presets:
        say("  it defines no presets or env: nothing in it runs commands")
    for name, command in report.presets.items():
        env = report.env.get(name)
        say(f"  preset {name}: {shlex.join(command)}" + (f"  (env: {', '.join(env)})" if env else ""))
