"""``tt dashboard [--host H] [--port P] [--open]``: the town as a live web page.

The page, its routes and the token gate are :mod:`tinytown.dashboard`; this only parses,
prints where the page is and stops cleanly on Ctrl-C.
"""

from typing import TYPE_CHECKING, Annotated

import typer

from tinytown.cli.app import app, run

if TYPE_CHECKING:
    from tinytown.town import Town

DEFAULT_PORT = 8787


@app.command()
def dashboard(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; any but loopback needs the printed token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).", min=0,
                                      max=65535)] = DEFAULT_PORT,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")] = False,
) -> None:
    """A live web page of the town: agents, task board, conversation, round logs; send and assign."""

    async def go(town: "Town") -> None:
        from tinytown.dashboard.server import serve

        def started(url: str, token: str | None) -> None:
            typer.echo(f"dashboard of town {town.name} at {url}")
            if token is not None:
                typer.echo(f"token: {token} (once as ?token=, then a cookie; or Authorization: Bearer)")
            typer.echo("Ctrl-C stops it")
            if open_browser:
                import webbrowser

                webbrowser.open(url)

        await serve(town, host=host, port=port, on_start=started)

    try:
        run(ctx, go)
    except KeyboardInterrupt:
        pass
    typer.echo("dashboard stopped")
