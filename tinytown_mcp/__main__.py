"""``python -m tinytown_mcp``: the same as the ``tinytown-mcp`` command."""

from tinytown_mcp.server import main

main()
