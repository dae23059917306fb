"""``tt mcp config``: print a ready-to-paste MCP client config for this town.

No Redis and no ``mcp`` import: the config only names the town directory and the agent.
With ``--http URL`` the config reaches ``tt serve`` instead, with a bearer token in its
header (``--token``, else a new one is made for the agent: that needs the town's Redis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tinytown.cli.app import JsonOption, app, fail, identity, print_json, run_plain, state
from tinytown.config import find_town_root
from tinytown.mcp_config import (
    CHANNELS_HINT,
    CLIENTS,
    WHERE,
    Client,
    client_config,
    secrets_note,
    server_entry,
)
from tinytown.models import AGENT_NAME_RE, CONDUCTOR, normalise_agent_name

if TYPE_CHECKING:
    from tinytown.town import Town

mcp_app = typer.Typer(help="Connect MCP clients (Claude Code, Codex, Gemini CLI, Cursor, Claude Desktop).",
                      no_args_is_help=True)
app.add_typer(mcp_app, name="mcp")


@mcp_app.command("config")
def config(
    ctx: typer.Context,
    client: Annotated[str, typer.Option(
        "--client", help=f"Which client the snippet is for: {', '.join(CLIENTS)}.")] = "claude",
    agent: Annotated[str | None, typer.Option(
        "--agent", help="The identity the session gets (default: $TINYTOWN_AGENT, else conductor).")] = None,
    http: Annotated[str | None, typer.Option(
        "--http", help="Reach `tt serve` at this URL (e.g. http://host:8765/mcp) instead of starting "
                       "tinytown-mcp.")] = None,
    token: Annotated[str | None, typer.Option(
        "--token",
        help="With --http: the agent's bearer token (default: a new one, `tt token add`).")] = None,
    push: Annotated[bool, typer.Option(
        "--push", help="The server pushes each new message into the session as a Claude Code "
        "channel event (tinytown-mcp --push; with --http, ?push=1 on the URL).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Print the MCP server config that connects CLIENT to this town as AGENT."""
    if client not in CLIENTS:
        fail(f"invalid: --client must be one of {', '.join(CLIENTS)}, not {client!r}", code=2)
    name = normalise_agent_name(identity(agent))
    if name == "all":
        fail("invalid: 'all' names every agent (a broadcast); a session is one agent: pick its name")
    if name != CONDUCTOR and not AGENT_NAME_RE.match(name):
        fail(f"invalid: {identity(agent)!r} is not an agent name (1-32 of a-z, 0-9, '_', '-', "
             "starting with a letter)")
    if http is not None:
        _http_config(ctx, client, name, http, token, json_out, push)
        return
    if token is not None:
        fail("invalid: --token goes with --http (a stdio server needs no token)", code=2)
    root = run_plain(lambda: find_town_root(state(ctx).town))
    chosen: Client = client  # type: ignore[assignment]  # checked against CLIENTS above
    text = client_config(root, name, chosen, push=push)
    note = secrets_note(chosen)
    if note:
        typer.echo(f"tt: {note}", err=True)
    if push and chosen == "claude":
        typer.echo(f"tt: {CHANNELS_HINT}", err=True)
    if json_out:
        print_json({
            "client": chosen, "agent": name, "town": str(root), "where": WHERE[chosen],
            "server": server_entry(root, name, chosen, push=push), "config": text,
        })
        return
    typer.echo(text, nl=False)
    typer.echo(f"# paste into {WHERE[chosen]}", err=True)


@mcp_app.command("hooks")
def hooks(json_out: JsonOption = False) -> None:
    """Print the Claude Code hooks that keep a window you opened aware of the town: `tt prime`
    at session start and after compaction, waiting mail before each prompt. Merge them into
    .claude/settings.json (or settings.local.json) and start the window as
    TINYTOWN_AGENT=NAME claude."""
    from tinytown.config import example_text

    # The hooks are JSON already; --json is accepted like on every command (same output).
    typer.echo(example_text("claude-code-hooks.json"), nl=False)
    if not json_out:
        typer.echo("# merge into .claude/settings.json; start the window as TINYTOWN_AGENT=NAME claude",
                   err=True)


def _http_config(
    ctx: typer.Context, client: str, agent: str, url: str, token: str | None, json_out: bool,
    push: bool,
) -> None:
    from tinytown.mcp_config import HTTP_CLIENTS, http_client_config, mcp_url, with_push

    if client not in HTTP_CLIENTS:
        fail(f"invalid: --http configs are for {', '.join(HTTP_CLIENTS)}; {client} adds remote servers "
             "in its own settings", code=2)
    try:
        endpoint = mcp_url(url)
    except ValueError as error:
        fail(f"invalid: {error}", code=2)
    if token is None:
        from tinytown.cli.app import run

        async def make(town: Town) -> str:
            return (await town.tokens.add(agent)).token

        token = run(ctx, make)
        typer.echo(f"tt: made a new token for {agent} (`tt token list` shows it, `tt token revoke {agent}` "
                   "withdraws it)", err=True)
    chosen: Client = client  # type: ignore[assignment]  # checked against HTTP_CLIENTS above
    text = http_client_config(endpoint, token, chosen, push=push)
    if push:
        endpoint = with_push(endpoint)
        if chosen == "claude":
            typer.echo(f"tt: {CHANNELS_HINT}", err=True)
    if json_out:
        print_json({"client": chosen, "agent": agent, "url": endpoint, "token": token, "where": WHERE[chosen],
                    "config": text})
        return
    typer.echo(text, nl=False)
    typer.echo(f"# paste into {WHERE[chosen]}; it holds {agent}'s token: keep it private", err=True)
