"""Push over MCP: Claude Code's channel notifications (``notifications/claude/channel``).

The server declares the capability ``experimental["claude/channel"]`` (every session; only a
session that opted in is sent anything).  For an opted-in session, :func:`attach` starts a
:class:`~tinytown.push.PushFeed` once the client has sent ``notifications/initialized``, and
each new message goes out as one notification::

    {"method": "notifications/claude/channel",
     "params": {"content": "<the body, folded if long>",
                "meta": {"from": "conductor", "kind": "task", "priority": "normal",
                         "message_id": "…", "task": "#3", "task_id": "…",
                         "reply_to": "…", "delivery_count": "1", "folded": "true"}}}

``task``, ``task_id``, ``reply_to`` and ``folded`` appear only when they apply.  Claude Code
(≥ 2.1.80, started with ``--dangerously-load-development-channels server:tinytown``) shows
it to the model as ``<channel source="tinytown" from="conductor" …>body</channel>``; meta
keys are plain identifiers because it drops any other.  Stdio and HTTP attach it the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, cast

from mcp.server.session import ServerSession
from mcp_types import Notification, NotificationParams, ServerNotification

from tinytown.push import Pushed, PushFeed
from tinytown_mcp.adapter import Session

log = logging.getLogger("tinytown_mcp.push")

CHANNEL = "claude/channel"
METHOD: Final = "notifications/claude/channel"
CAPABILITIES: dict[str, dict[str, Any]] = {CHANNEL: {}}
"""What goes into ``ServerCapabilities.experimental``."""


class ChannelParams(NotificationParams):
    content: str
    meta: dict[str, str]


class ChannelNotification(Notification[ChannelParams, Literal["notifications/claude/channel"]]):
    method: Literal["notifications/claude/channel"] = METHOD
    params: ChannelParams


def channel_params(pushed: Pushed) -> ChannelParams:
    """The notification's params for one pushed message (see the module doc)."""
    message = pushed.message
    meta = {
        "from": message.sender,
        "kind": message.kind.value,
        "priority": message.priority.value,
        "message_id": message.id,
        "delivery_count": str(message.delivery_count),
    }
    if message.task_id:
        if pushed.task_number is not None:
            meta["task"] = f"#{pushed.task_number}"
        meta["task_id"] = message.task_id
    if message.reply_to:
        meta["reply_to"] = message.reply_to
    if pushed.folded:
        meta["folded"] = "true"
    return ChannelParams(content=pushed.text, meta=meta)


def attach(
    session: Session, client: ServerSession, reachable: Callable[[], Awaitable[None]] | None = None
) -> PushFeed:
    """Start pushing ``session``'s new mail to ``client`` (call it once the client is
    initialized; ``reachable``: see :class:`~tinytown.push.PushFeed`); the feed lives as long
    as the session (``Session.spawn``)."""
    if session.push is not None:
        return session.push

    async def deliver(pushed: Pushed) -> None:
        notification = ChannelNotification(params=channel_params(pushed))
        # a notification outside the spec's union: the SDK sends any model of this shape
        await client.send_notification(cast(ServerNotification, notification))

    feed = PushFeed(session.town, session.agent, session.session_id, deliver, reachable)
    session.push = feed
    if session.spawn is not None:
        session.spawn(feed.run)
    log.info("pushing new mail of %s to session %s", session.agent, session.session_id)
    return feed
