"""Scripted model APIs served on 127.0.0.1, for driving the released agent CLIs.

One *script* (the "brain": given the conversation so far, the next step) and one wire
format per API: :mod:`.server` holds the shared parts — the threaded HTTP server that logs
every request, the :class:`Turn` a script sees and the :class:`ToolCall` it returns — and
each API module (``anthropic``, ``openai_responses``, ``gemini``, ``openai_chat``) turns its
requests into a ``Turn`` and a step into its own streaming reply.
"""
