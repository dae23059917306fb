"""``tt serve`` (the town's MCP server over streamable HTTP) and ``tt token add|list|revoke``
(the bearer tokens that name its callers, :mod:`tinytown.tokens`).

The HTTP face lives in :mod:`tinytown_mcp.http`; it is imported only when ``tt serve`` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tinytown.cli.app import JsonOption, app, fail, print_json, run

if TYPE_CHECKING:
    from tinytown.town import Town

token_app = typer.Typer(help="Bearer tokens for `tt serve`: one token names one agent.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free one).", min=0,
                                      max=65535)] = 8765,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM) to serve HTTPS.",
                                                  exists=True, dir_okay=False)] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The certificate's private key (PEM).",
                                                 exists=True, dir_okay=False)] = None,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http",
        help="Serve plain HTTP beyond loopback (a TLS proxy terminates in front).")] = False,
    keepalive: Annotated[float, typer.Option(
        "--keepalive", help="Seconds between keep-alives of a waiting receive and of every SSE stream.",
        min=1.0, max=120.0)] = 10.0,
) -> None:
    """Serve the town's MCP server over streamable HTTP at /mcp, for many agents at once.

    Every request needs `Authorization: Bearer TOKEN` (`tt token add NAME`); the token alone
    says which agent the caller is. Health check: GET /healthz. Stops on SIGTERM or Ctrl-C.
    """
    from tinytown_mcp.http import MCP_PATH, bind_problem, serve_http

    if (tls_cert is None) != (tls_key is None):
        fail("invalid: give both --tls-cert and --tls-key, or neither", code=2)
    problem = bind_problem(host, tls_cert is not None, insecure_http)
    if problem is not None:
        fail(problem, code=2)

    async def go(town: Town) -> None:
        def announce(base: str) -> None:
            sys.stdout.write(f"tt serve: town {town.name} at {base}{MCP_PATH} (health: {base}/healthz)\n")
            sys.stdout.flush()

        await serve_http(
            town, host=host, port=port, tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None, keepalive_s=keepalive, announce=announce,
        )

    run(ctx, go)


@token_app.command("add")
def token_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The agent the token names (it need not exist yet).")],
    json_out: JsonOption = False,
) -> None:
    """Make a bearer token for agent NAME and print it (the only time it is shown)."""
    async def go(town: Town) -> tuple[str, str]:
        issued = await town.tokens.add(name)
        return issued.agent, issued.token

    agent, token = run(ctx, go)
    if json_out:
        print_json({"agent": agent, "token": token})
        return
    typer.echo(token)
    # a note, not an error: "tt: …" on stderr is how failures read
    typer.echo(f"# the token of {agent}; it is not shown again (`tt token revoke {agent}` withdraws it)",
               err=True)


@token_app.command("list")
def token_list(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Every token's agent, when it was made and last used (never the tokens themselves)."""
    from tinytown.tokens import TokenInfo

    async def go(town: Town) -> tuple[list[TokenInfo], int]:
        return await town.tokens.list(), await town.now_ms()

    tokens, now = run(ctx, go)
    if json_out:
        print_json({"tokens": tokens})
        return
    from tinytown.cli.render import ago, say

    if not tokens:
        say("no tokens; `tt token add NAME` makes one")
        return
    width = max(len(t.agent) for t in tokens)
    for t in tokens:
        used = f"last used {ago(t.last_used, now)}" if t.last_used else "never used"
        say(f"{t.agent:<{width}}  {t.id}  created {ago(t.created, now)}  {used}")


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The agent whose tokens to withdraw.")],
    json_out: JsonOption = False,
) -> None:
    """Withdraw every token of agent NAME: their next request is refused (401)."""
    async def go(town: Town) -> int:
        return await town.tokens.revoke(name)

    count = run(ctx, go)
    if json_out:
        print_json({"agent": name, "revoked": count})
        return
    typer.echo(f"revoked {count} token(s) of {name}")
