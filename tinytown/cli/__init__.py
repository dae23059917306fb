"""The ``tt`` CLI: the human's console for a town.  Thin: parse, call one Town method, render.

It never imports ``mcp`` (start-up time): ``tt send`` must stay fast.
"""
