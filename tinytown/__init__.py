"""Tinytown: coding agents that work together through Redis.

The five core types: :class:`Town` (the service layer, owns Redis), :class:`Agent`,
:class:`Task`, :class:`Message` and :class:`Channel` (the Redis transport).
"""

from tinytown.channel import Channel
from tinytown.errors import Conflict, Forbidden, Invalid, NotFound, TinytownError, Unavailable
from tinytown.models import Agent, AgentState, Message, MessageKind, Priority, Task, TaskState
from tinytown.town import Town

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
