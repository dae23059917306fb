"""Tinytown's MCP server: the Town as tools, resources and prompts, one identity per session.

Run it with ``tinytown-mcp [--town PATH] [--agent NAME]`` or ``python -m tinytown_mcp``;
embed it with :func:`build_server` (a :class:`~mcp.server.mcpserver.MCPServer`).
"""

from tinytown_mcp.server import TownServer, build_server, main

__all__ = ["TownServer", "build_server", "main"]
