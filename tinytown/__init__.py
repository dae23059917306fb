"""Tinytown: coding agents that work together through Redis.

The five core types: :class:`Town` (the service layer, owns Redis), :class:`Agent`,
:class:`Task`, :class:`Message` and :class:`Channel` (the Redis transport).

They are imported on first use (``from tinytown import Town`` works as ever): importing a
submodule such as ``tinytown.cli`` or ``tinytown.models`` then does not load the Town and
everything under it, which ``tt``'s start-up would pay for (bench/cli_startup.py).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinytown.channel import Channel
    from tinytown.errors import Conflict, Forbidden, Invalid, NotFound, TinytownError, Unavailable
    from tinytown.models import Agent, AgentState, Message, MessageKind, Priority, Task, TaskState
    from tinytown.town import Town

_HOMES = {
    "Channel": "tinytown.channel",
    **dict.fromkeys(
        ("Conflict", "Forbidden", "Invalid", "NotFound", "TinytownError", "Unavailable"), "tinytown.errors"
    ),
    **dict.fromkeys(
        ("Agent", "AgentState", "Message", "MessageKind", "Priority", "Task", "TaskState"), "tinytown.models"
    ),
    "Town": "tinytown.town",
}

__all__ = [
    "Agent",
    "AgentState",
    "Channel",
    "Conflict",
    "Forbidden",
    "Invalid",
    "Message",
    "MessageKind",
    "NotFound",
    "Priority",
    "Task",
    "TaskState",
    "TinytownError",
    "Town",
    "Unavailable",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tinytown' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
