"""Mail pushed into a live session the moment it arrives (issue 11, "push").

A session that opted in (``tinytown-mcp --push``, ``?push=1`` over HTTP) gets a
:class:`PushFeed`: a task that waits for the agent's mail inside Redis (``BLPOP`` on the
agent's bell, the same wake-up a blocking ``receive`` uses: no polling) and hands each new
message to the face's ``deliver`` callback, which sends it to the client (an MCP
``notifications/claude/channel``).  The feed knows nothing of MCP; the stdio server and the
HTTP server attach one to a session the same way.

Pushed messages follow the delivery rule.  The feed takes each one with a receive of the
session that acknowledges nothing (one message per batch), so it is *in flight for that
session*, like a receive batch, until the session shows it acted on it: ``ack`` with the
message id, ``send_message`` with ``reply_to`` = the message id, or ``task_done`` /
``task_failed`` for the task a ``task`` message carries.  Nothing else acknowledges it:

* any other tool call: one the model had decided on before the event reached it may arrive
  after it, so it proves nothing about what the model saw;
* the session's next ``receive`` puts every pushed message not acted on back at the front of
  the inbox and returns it (``delivery_count`` + 1): a client may have dropped the event
  (Claude Code shows channel events only when channels are enabled for the session), and a
  folded one is whole there.

When the session ends, whatever is still unacknowledged goes back to the front of the inbox
(and if the process was killed, the next session's take-over puts it back): it comes back.

While a ``receive`` of the session runs, the feed stands aside: the receive returns the
new mail itself, and one wake-up never serves both.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from tinytown.channel import BLOCK_SLICE_S
from tinytown.errors import Conflict, TinytownError, Unavailable, wrap_redis_errors
from tinytown.models import Message

if TYPE_CHECKING:
    from tinytown.town import Town

log = logging.getLogger("tinytown.push")

FOLD_CHARS = 4000
"""A pushed body longer than this is folded: its head is pushed, and the next ``receive``
returns the whole message."""


@dataclass(frozen=True)
class Pushed:
    """One message as a session is told of it."""

    message: Message
    task_number: int | None
    """The ``#N`` of the message's task, if it carries one."""
    text: str
    """The body, folded when longer than :data:`FOLD_CHARS`."""
    folded: bool


RETRY_S = 1.0
"""After Redis failed to answer, the feed tries again this much later."""

Deliver = Callable[[Pushed], Awaitable[None]]


def fold(body: str, limit: int = FOLD_CHARS) -> tuple[str, bool]:
    """``(text, folded)``: the body, or its head and a note saying how to get the rest."""
    if len(body) <= limit:
        return body, False
    rest = len(body) - limit
    return (f"{body[:limit]}\n[… {rest} more characters folded: `receive` returns this message "
            "whole]"), True


class PushFeed:
    """Pushes an agent's new messages to one live session (see the module doc)."""

    def __init__(
        self, town: Town, agent: str, session_id: str, deliver: Deliver,
        reachable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``reachable()`` returns once the client can be sent to (over HTTP: while its
        standalone stream is open); the feed takes no mail before."""
        self.town = town
        self.agent = agent
        self.session_id = session_id
        self.deliver = deliver
        self.reachable = reachable
        self._lock = anyio.Lock()  # one take-and-deliver, or one receive settling, at a time
        self._receives = 0
        self._resumed = anyio.Event()
        self._resumed.set()
        self._pushed: dict[str, str] = {}  # message id -> its batch

    @property
    def pushed(self) -> list[str]:
        """Ids of the messages pushed to this session and not yet acknowledged by it."""
        return list(self._pushed)

    async def run(self) -> None:
        """Push until cancelled (the session ended) or the session loses the mailbox."""
        agent_id = await self.town._agent_id(self.agent)
        bell = self.town.keys.bell(agent_id)
        try:
            while True:
                if self._receives:
                    await self._resumed.wait()
                    continue
                if self.reachable is not None:
                    await self.reachable()
                try:
                    async with self._lock:
                        took = False if self._receives else await self._take_one()
                    if took:
                        continue
                    async with wrap_redis_errors():
                        rang = await self.town.redis.blpop([bell], timeout=BLOCK_SLICE_S)
                    if rang is not None and self._receives:
                        await self._ring(bell)  # a receive started meanwhile: the wake-up is its
                except Unavailable as error:  # Redis is away: try again shortly
                    log.warning("push to %s waits for Redis: %s", self.agent, error)
                    await anyio.sleep(RETRY_S)
        except Conflict as error:  # a newer session took the mailbox over
            log.info("push to %s (session %s) ends: %s", self.agent, self.session_id, error)

    async def _take_one(self) -> bool:
        got = await self.town.receive(
            self.agent, timeout_s=0, max_messages=1, session=self.session_id,
            ack_previous=False, batch=f"push-{uuid.uuid4().hex}",
        )
        if not got.messages:
            return False
        message = got.messages[0]
        text, folded = fold(message.body)
        self._pushed[message.id] = got.batch
        number = None
        if message.task_id:
            number = (await self.town.task_numbers([message.task_id])).get(message.task_id)
        await self.deliver(Pushed(message, number, text, folded))
        log.info("pushed %s to %s (session %s)", message.id, self.agent, self.session_id)
        return True

    async def _ring(self, bell: str) -> None:
        async with wrap_redis_errors():
            async with self.town.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(bell, "1")
                pipe.ltrim(bell, 0, 0)
                await pipe.execute()

    @asynccontextmanager
    async def receiving(self) -> AsyncIterator[None]:
        """Around a ``receive`` of this session: what was pushed and not acted on goes back to
        the front of the inbox, for this receive to return (whole), and the feed takes no mail
        until the receive is over."""
        if not self._receives:
            self._resumed = anyio.Event()
        self._receives += 1
        try:
            async with self._lock:
                await self._settle()
            yield
        finally:
            self._receives -= 1
            if not self._receives:
                self._resumed.set()

    async def _settle(self) -> None:
        pushed, self._pushed = self._pushed, {}
        try:
            await self._put_back(pushed.values())
        except BaseException:
            self._pushed = {**pushed, **self._pushed}
            raise

    def forget(self, message_ids: Sequence[str]) -> None:
        """These messages were acknowledged otherwise (``ack``)."""
        for mid in message_ids:
            self._pushed.pop(mid, None)

    async def acted_on(self, message_ids: Sequence[str]) -> int:
        """The session acted on these messages (``ack``, a reply to one): acknowledge the
        pushed ones.  Returns how many were pushed here."""
        mine = [mid for mid in message_ids if self._pushed.pop(mid, None) is not None]
        if mine:
            await self.town.ack(self.agent, mine)
        return len(mine)

    async def close(self) -> int:
        """The session ended: every pushed message it did not acknowledge goes back to the
        front of the inbox.  Returns how many went back."""
        pushed, self._pushed = self._pushed, {}
        back = 0
        with anyio.CancelScope(shield=True):
            try:
                back = await self._put_back(pushed.values())
            except TinytownError as error:  # the next session's take-over puts them back
                log.warning("putting back pushed messages of %s failed: %s", self.agent, error)
        return back

    async def _put_back(self, batches: Iterable[str]) -> int:
        count = 0
        agent_id = await self.town._agent_id(self.agent, cached=True)
        for batch in batches:
            count += await self.town.channel.requeue_batch(agent_id, batch)
        return count
