"""``tt dashboard``: the town as a live web page.

:mod:`tinytown.dashboard.board` reads what the page shows through Town operations,
:mod:`tinytown.dashboard.server` is the web face (Starlette routes, the token gate, the
Server-Sent Events stream of the town's events, uvicorn), and ``static/`` holds the page
itself (HTML, CSS and plain JavaScript shipped in the package: no build step, no CDN).
"""
