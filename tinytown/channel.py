"""The Channel: the Redis transport of a town.

Four priority lists per agent, a blocking receive that waits inside Redis, at-least-once
delivery through an in-flight set, redelivery, and the event stream.  All multi-key steps
run in the one Lua script of :mod:`tinytown.scripts`.

How a blocking receive waits: every enqueue pushes a token onto the recipient's *bell*
list (trimmed to one token).  ``receive`` first pops atomically; when the inbox is empty it
waits on ``BLPOP bell`` — inside Redis, no polling — and pops again when it wakes.  A
message that lands between the pop and the BLPOP leaves its token behind, so the BLPOP
returns at once: nothing is missed.  Cancelling the wait pops nothing from the inbox.

Every call is bounded: the client's socket timeout (:data:`CALL_TIMEOUT_S`) cuts a call to a
stalled Redis, blocking commands wait in slices shorter than that, and every script call
carries a deadline on Redis's clock a little earlier than the client gives up, so a script
Redis runs late (after a stall, or whose reply was lost) changes nothing.  Redis's clock is
estimated here from one ``TIME`` call plus the local monotonic clock (re-read every
:data:`CLOCK_RESYNC_S`); no decision depends on this machine's wall clock.

Batches: every receive tags what it delivers with a batch id ``"<session>/<channel>/<n>"``.  The
Channel remembers, per agent and session, the last batch it returned to its caller; the next
receive of that session acknowledges exactly that batch (:meth:`Channel.unseen` takes it
back when the caller learns its client never saw it) and puts back any other batch the
session was given but did not acknowledge.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tinytown.errors import Unavailable, translate_redis_error, wrap_redis_errors
from tinytown.keys import Keys
from tinytown.models import PRIORITY_ORDER, Event, InboxCounts, Message
from tinytown.scripts import TOWN_LUA
from tinytown.topology import failing_over, rides_failovers, town_node_call

EVENTS_MAXLEN = 10_000
PROGRESS_EVERY_S = 10.0
CALL_TIMEOUT_S = 5.0
"""The client gives up on any Redis call after this long (socket timeout): ``unavailable``."""
SCRIPT_BUDGET_S = 4.0
"""A script's deadline, from the moment it is sent: earlier than :data:`CALL_TIMEOUT_S`, so a
script that ran in time has its reply back before the client gives up."""
BLOCK_SLICE_S = 2.0
"""The longest single blocking command (BLPOP, XREAD BLOCK): well under the call timeout."""
CLOCK_RESYNC_S = 30.0
FAILOVER_RETRY_S = (0.1, 1.0)
"""A receive on a cluster or Sentinel client that meets a failover tries again after the
first of these, doubling up to the second, until its own deadline."""

SWEEP_BATCH = 50
"""Finished tasks one retention sweep expires at most: every finish and every heartbeat
sweeps, so expiry keeps up with any rate of finishing at a bounded cost per step."""

ProgressCallback = Callable[[float, float], Awaitable[None]]


@dataclass(frozen=True)
class RetentionTimes:
    """``[retention]`` as the Lua takes it (0: keep forever)."""

    tasks_s: int = 14 * 86400
    messages_s: int = 86400
    events_s: int = 14 * 86400

    @property
    def tasks_ms(self) -> int:
        return self.tasks_s * 1000

    @property
    def events_ms(self) -> int:
        return self.events_s * 1000


@dataclass
class Plan:
    """A guarded, all-or-nothing write applied by the ``apply`` Lua operation.

    Keys are given without the town prefix.  Guards compare a hash field against allowed
    values ('' = absent) and fail the whole plan with ``code: sentence`` when none match.
    """

    guards: list[list[Any]] = field(default_factory=list)
    hset: list[list[Any]] = field(default_factory=list)
    hdel: list[list[Any]] = field(default_factory=list)
    hincr: list[list[Any]] = field(default_factory=list)
    zadd: list[list[Any]] = field(default_factory=list)
    zrem: list[list[Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    limits: list[list[Any]] = field(default_factory=list)
    ack: list[list[Any]] = field(default_factory=list)
    send: list[list[Any]] = field(default_factory=list)
    events: list[list[Any]] = field(default_factory=list)
    number: list[list[str]] = field(default_factory=list)
    created: list[list[Any]] = field(default_factory=list)
    """``[seq counter, task key, task id, [zset keys]]``: the task gets the next seq (field
    ``seq``) and an entry with that score in each zset, inside the write."""
    finish: list[str] = field(default_factory=list)
    """Ids of tasks this plan finishes: recorded with Redis's clock for the retention sweep,
    which then runs in the same write."""
    refs: list[list[Any]] = field(default_factory=list)
    """``[key, field, items]``: a JSON list of ``#N`` written after numbering; an int item i
    is the number the i-th ``number`` entry (1-based) gets, a string item is kept."""
    stamp: list[list[Any]] = field(default_factory=list)
    """``[key, field]`` pairs set to Redis's clock (``last_seen``): never a client's time."""
    ring: list[str] = field(default_factory=list)
    """Agent ids whose bell rings if their inbox holds mail (a resumed agent's waiting
    receive looks again: a paused agent's receive is given nothing)."""

    def guard(self, key: str, fld: str, allowed: Sequence[str], code: str, sentence: str) -> None:
        self.guards.append([key, fld, list(allowed), code, sentence])

    def event(self, event_type: str, /, **data: Any) -> None:
        self.events.append([event_type, json.dumps(data)])

    def limit(self, zset: str, most: int, code: str, sentence: str) -> None:
        """Fail the plan with ``code: sentence`` when ``zset`` already has ``most`` members
        (checked inside the atomic write, so concurrent plans cannot all pass it)."""
        self.limits.append([zset, most, code, sentence])

    def acknowledge(self, agent_id: str, message_id: str, priority: str) -> None:
        """Acknowledge a message of ``agent_id`` wherever it is: in flight, or still queued
        (then it is taken out of the inbox and never delivered)."""
        self.ack.append([agent_id, message_id, priority])

    def notice(self, agent_id: str, fields: dict[str, str], name: str) -> None:
        """Send a task notice: unlike :attr:`send`, a full inbox never fails the plan (its
        oldest queued notice is dropped to make room, see :mod:`tinytown.scripts`)."""
        self.send.append([agent_id, fields, name, True])


@dataclass
class Received:
    messages: list[Message]
    timed_out: bool
    inbox: InboxCounts = field(default_factory=InboxCounts)
    """The receiver's mailbox right after this batch was taken."""
    batch: str = ""
    """The batch id the messages were delivered under (see :meth:`Channel.unseen`)."""


class Channel:
    """Messages in and out of agents' inboxes.  Agents are addressed by id here."""

    def __init__(
        self, redis: Redis, keys: Keys, *, max_inbox: int = 10_000, max_receive_bytes: int = 0,
        retention: RetentionTimes | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.max_inbox = max_inbox
        self.retention = retention or RetentionTimes()
        # message bodies in one receive batch (0: no cap); the rest waits for the next receive
        self.max_receive_bytes = max_receive_bytes
        self._sha = hashlib.sha1(TOWN_LUA.encode()).hexdigest()
        self._clock: tuple[float, float] | None = None  # (monotonic s, Redis ms) at one instant
        self._delivered: dict[tuple[str, str], str] = {}  # (agent id, session) -> last batch
        self._nonce = uuid.uuid4().hex[:12]  # this Channel's batches, among its session's
        self._unseen: dict[str, None] = {}  # batches whose client gave up (oldest first)
        self._rides = rides_failovers(redis)  # a client that finds a new primary by itself

    async def _run(self, op: str, *args: Any) -> Any:
        """EVALSHA the town script (loading it on NOSCRIPT) with a deadline on Redis's clock.
        Called directly, without a wrapper object or context manager: this is every send's
        and receive's path."""
        try:
            deadline = await self._deadline()
            try:
                return await self.redis.evalsha(
                    self._sha, 1, self.keys.seq, op, self.keys.prefix, deadline, *args
                )
            except NoScriptError:
                self._sha = await self.redis.script_load(TOWN_LUA)
                return await self.redis.evalsha(
                    self._sha, 1, self.keys.seq, op, self.keys.prefix, await self._deadline(), *args
                )
        except RedisError as exc:
            raise translate_redis_error(exc) from exc

    async def _deadline(self) -> int:
        return int(await self.now_ms() + SCRIPT_BUDGET_S * 1000)

    async def now_ms(self) -> int:
        """Redis's clock now (ms), estimated from a recent ``TIME`` and the monotonic clock.

        Raises:
            Unavailable: Redis does not answer.
        """
        mono = time.monotonic()
        if self._clock is None or mono - self._clock[0] > CLOCK_RESYNC_S:
            async with wrap_redis_errors():
                seconds, micros = await town_node_call(self.redis, self.keys.seq, "TIME")
            after = time.monotonic()
            self._clock = ((mono + after) / 2, int(seconds) * 1000 + int(micros) / 1000)
            mono = after
        return int(self._clock[1] + (mono - self._clock[0]) * 1000)

    async def send(self, sender: str, target: str, message: Message) -> list[str]:
        """Enqueue ``message`` for agent name ``target`` (``"*"``: every live agent but the
        sender), in one round trip.

        Returns the ids of the stored copies.

        Raises:
            Invalid: a recipient's inbox is full (nothing is stored).
            NotFound: unknown sender or recipient, or the message's task / reply_to is gone.
        """
        data = message.to_redis()
        ids = await self._run(
            "send", self.max_inbox, EVENTS_MAXLEN, sender, json.dumps(data), target
        )
        return [str(i) for i in ids]

    async def receive(
        self,
        agent_id: str,
        *,
        timeout_s: float,
        max_messages: int,
        redelivery_after_s: float,
        session: str | None = None,
        ack_previous: bool = True,
        batch: str | None = None,
        progress: ProgressCallback | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> Received:
        """Wait up to ``timeout_s`` for messages; return as soon as any arrive.

        A batch holds at most ``max_messages`` messages whose bodies total at most
        ``max_receive_bytes`` (always at least one message); the rest stays queued.

        The batch moves atomically into the agent's in-flight set under the batch id
        ``"<session>/<channel>/<batch>"`` (``batch``: a fresh id when not given).  With
        ``ack_previous``, the batch this Channel last returned for the same agent and session
        is acknowledged first, and any other batch this Channel delivered for that session and
        that is still in flight goes back to the front of the inbox (its caller never saw it;
        batches of other processes sharing the session — a runner's round — are left alone).
        Otherwise messages stay in flight until :meth:`ack`, or are redelivered after
        ``redelivery_after_s``.

        This receive becomes the agent's one waiting receive: an older one still waiting
        ends with ``conflict``.  Waiting happens in slices of at most
        :data:`BLOCK_SLICE_S`; ``progress(elapsed, total)`` is awaited every
        ``progress_every_s`` while it waits.

        Raises:
            Conflict: a newer session owns the mailbox, or a newer receive replaced this one.
            Unavailable: Redis did not answer within the call bound.
        """
        started = time.monotonic()
        deadline = started + max(0.0, timeout_s)
        bell = self.keys.bell(agent_id)
        key = (agent_id, session or "")
        mine = f"{session or ''}/{self._nonce}/"
        tag = mine + (batch or uuid.uuid4().hex)
        ack_batch = self._delivered.get(key, "") if ack_previous else ""
        if ack_batch in self._unseen:
            ack_batch = ""
        reported = started
        first = True
        retry_s = FAILOVER_RETRY_S[0]
        while True:
            final = time.monotonic() >= deadline
            # Shielded: a cancel landing while the script runs would drop a batch that Redis
            # already moved to in-flight.  Bounded by the call timeout (a stalled Redis), and
            # a script Redis runs after that deadline changes nothing.
            rows: Any = None
            try:
                with anyio.CancelScope(shield=True):
                    rows = await self._run(
                        "receive", agent_id, session or "", max_messages,
                        int(redelivery_after_s * 1000), "1" if ack_previous else "0", EVENTS_MAXLEN,
                        self.max_receive_bytes, tag, ack_batch, "1" if first else "0",
                        "1" if final else "0", mine if ack_previous else "",
                        self.retention.messages_s,
                    )
            except Unavailable as error:
                # a failover: the same call again (it is idempotent per batch) once a new
                # primary serves the town, while this receive has time left
                retry_s = await self._wait_out_failover(error, deadline, retry_s)
                continue
            if first and ack_batch and self._delivered.get(key) == ack_batch:
                del self._delivered[key]
            first = False
            counts, ids = _counts(rows[0]), rows[2]
            if ids:
                received = Received(
                    [_message_from_row(row, mid) for row, mid in zip(rows[1], ids, strict=True)],
                    timed_out=False, inbox=counts, batch=tag,
                )
                try:
                    await anyio.lowlevel.checkpoint()
                except anyio.get_cancelled_exc_class():
                    # cancelled meanwhile: nobody will see this batch, so put it back
                    with anyio.CancelScope(shield=True):
                        await self.requeue_batch(agent_id, tag)
                    raise
                # a client may give up while the script runs: then the batch is not remembered
                # as seen, and the next receive of the session puts it back
                if ack_previous and tag not in self._unseen:
                    self._delivered[key] = tag
                return received
            if final:
                return Received([], timed_out=True, inbox=counts)
            now = time.monotonic()
            wait = min(deadline - now, BLOCK_SLICE_S, progress_every_s)
            try:
                async with wrap_redis_errors():
                    # BLPOP takes seconds as a float (Redis >= 6); 0 would mean forever.
                    rang = await self.redis.blpop([bell], timeout=max(wait, 0.01))
            except Unavailable as error:
                retry_s = await self._wait_out_failover(error, deadline, retry_s)
                continue
            retry_s = FAILOVER_RETRY_S[0]
            # Progress only while more waiting follows: once the deadline has passed the
            # result is decided, and a notification racing it is one the client has already
            # forgotten the token of (Claude Code logs it as an unknown token).
            now = time.monotonic()
            if (rang is None and progress is not None and now < deadline
                    and now - reported >= progress_every_s * 0.999):
                reported = now
                await progress(now - started, timeout_s)

    async def _wait_out_failover(self, error: Unavailable, deadline: float, retry_s: float) -> float:
        """Wait a moment before a receive tries again after ``error``, or re-raise it: only a
        client that finds a new primary by itself (cluster, Sentinel) waits, only for an error
        a failover gives (never a timeout: a stalled server answers ``unavailable`` within
        the call bound), and only while the receive has time left.  Returns the next wait."""
        cause = error.__cause__
        if not (self._rides and cause is not None and failing_over(cause)):
            raise error
        if time.monotonic() + retry_s >= deadline:
            raise error
        await anyio.sleep(retry_s)
        return min(retry_s * 2, FAILOVER_RETRY_S[1])

    def unseen(self, agent_id: str, session: str | None, batch: str) -> str:
        """The caller learnt that its client never saw the batch it named ``batch`` in
        :meth:`receive` (the client gave up on the call): the next receive of the session
        must not acknowledge it.  Synchronous, so it takes effect before any later call of
        the same session.  Returns the batch's full id, for :meth:`requeue_batch`."""
        key = (agent_id, session or "")
        tag = f"{session or ''}/{self._nonce}/{batch}"
        if self._delivered.get(key) == tag:
            del self._delivered[key]
        self._unseen[tag] = None
        while len(self._unseen) > 1024:
            del self._unseen[next(iter(self._unseen))]
        return tag

    async def requeue_batch(self, agent_id: str, batch: str) -> int:
        """Put back the messages of ``batch`` (a full batch id) still in flight, at the
        front of the inbox."""
        return int(await self._run("requeue_batch", agent_id, batch))

    async def touch(self, agent_id: str) -> None:
        """``last_seen`` = Redis's clock now (a heartbeat)."""
        r = self.retention
        await self._run("touch", agent_id, r.tasks_ms, r.events_ms, SWEEP_BATCH)

    async def sweep(self, batch: int = SWEEP_BATCH) -> int:
        """Expire up to ``batch`` tasks finished longer ago than the retention, and events
        older than theirs; returns how many tasks went."""
        r = self.retention
        return int(await self._run("sweep", r.tasks_ms, r.events_ms, batch))

    async def ack(self, agent_id: str, message_ids: Sequence[str]) -> int:
        """Acknowledge in-flight messages; unknown or already-acked ids are ignored.

        Returns how many were acknowledged now.
        """
        if not message_ids:
            return 0
        return int(await self._run("ack", agent_id, self.retention.messages_s, *message_ids))

    async def requeue(self, agent_id: str) -> int:
        """Put every in-flight message of the agent back at the front of its inbox."""
        return int(await self._run("requeue", agent_id))

    async def claim(self, agent_id: str, task_id: str | None, session: str | None = None) -> str:
        """Take a backlog task for the agent, held by ``session`` (default: the agent's
        current one).

        Raises:
            Conflict: ``session`` is no longer the agent's session, or the task is not pending.
            NotFound: the backlog is empty, or no such task.
        """
        return str(await self._run("claim", agent_id, task_id or "", EVENTS_MAXLEN, session or ""))

    async def apply(self, plan: Plan) -> list[int]:
        """Run a guarded plan atomically (see :class:`Plan`); returns the task numbers it
        gave (``plan.number``), in order."""
        body = {
            "guards": plan.guards,
            "hset": plan.hset,
            "hdel": plan.hdel,
            "hincr": plan.hincr,
            "zadd": plan.zadd,
            "zrem": plan.zrem,
            "del": plan.delete,
            "limits": plan.limits,
            "ack": plan.ack,
            "send": plan.send,
            "events": plan.events,
            "number": plan.number,
            "created": plan.created,
            "refs": plan.refs,
            "stamp": plan.stamp,
            "ring": plan.ring,
            "max_inbox": self.max_inbox,
            "maxlen": EVENTS_MAXLEN,
            "acked_ttl": self.retention.messages_s,
        }
        if plan.finish:
            r = self.retention
            body["finish"] = plan.finish
            body["sweep"] = [r.tasks_ms, r.events_ms, SWEEP_BATCH]
        given = await self._run("apply", json.dumps(body))
        return [int(n) for n in given] if isinstance(given, list) else []


    async def counts(self, agent_id: str) -> InboxCounts:
        """Pending, urgent and in-flight counts in one script call: the MCP server adds them to
        every result, and a five-command pipeline cost twice as much in redis-py."""
        return _counts(await self._run("counts", agent_id))

    async def peek(self, agent_id: str, limit: int = 50) -> list[Message]:
        """The pending messages in the order they would be received, without consuming."""
        ids: list[str] = []
        async with wrap_redis_errors():
            for priority in PRIORITY_ORDER:
                if len(ids) >= limit:
                    break
                ids += await self.redis.lrange(
                    self.keys.inbox(agent_id, priority), 0, limit - len(ids) - 1
                )
            return await self.load(ids)

    async def in_flight(self, agent_id: str) -> list[Message]:
        async with wrap_redis_errors():
            ids = await self.redis.zrange(self.keys.inflight(agent_id), 0, -1)
        return await self.load(ids)

    async def load(self, message_ids: Sequence[str]) -> list[Message]:
        """The stored messages of ``message_ids`` (gone ones left out), in one round trip."""
        if not message_ids:
            return []
        async with wrap_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for mid in message_ids:
                    pipe.get(self.keys.message(mid))
                raws = await pipe.execute(raise_on_error=False)
        loaded = [await self.decode(mid, raw) for mid, raw in zip(message_ids, raws, strict=True)]
        return [m for m in loaded if m is not None]

    async def decode(self, message_id: str, raw: Any) -> Message | None:
        """A message from the reply of ``GET msg:<id>``: its JSON record, or — where the
        reply is a wrong-type error — the hash record a town written before stores (read
        with one more call)."""
        if isinstance(raw, ResponseError) and "WRONGTYPE" in str(raw):
            async with wrap_redis_errors():
                row = await self.redis.hgetall(self.keys.message(message_id))
            return Message.from_redis(row) if row else None
        if isinstance(raw, Exception):
            raise translate_redis_error(raw) if isinstance(raw, RedisError) else raw
        if raw is None:
            return None
        return _message_from_row(raw, message_id)

    async def events(self, count: int = 20) -> list[Event]:
        """The newest ``count`` events, oldest first."""
        async with wrap_redis_errors():
            rows = await self.redis.xrevrange(self.keys.events, count=count)
        return [_event(eid, fields) for eid, fields in reversed(rows)]

    async def events_before(self, before: str | None, count: int) -> list[Event]:
        """Up to ``count`` events older than id ``before`` (``None``: the newest), newest first:
        a page of a backwards scan."""
        async with wrap_redis_errors():
            rows = await self.redis.xrevrange(
                self.keys.events, max=f"({before}" if before else "+", min="-", count=count
            )
        return [_event(eid, fields) for eid, fields in rows]

    async def wait_events(self, after: str, block_s: float) -> list[Event]:
        """Events after id ``after`` (``"$"``: only new ones), waiting up to ``block_s`` (at
        most :data:`BLOCK_SLICE_S`: callers loop)."""
        block_ms = max(1, int(min(block_s, BLOCK_SLICE_S) * 1000))
        async with wrap_redis_errors():
            reply = await self.redis.xread({self.keys.events: after}, block=block_ms, count=100)
        if not reply:
            return []
        return [_event(eid, fields) for _stream, rows in reply for eid, fields in rows]

    async def last_event_id(self) -> str:
        async with wrap_redis_errors():
            rows = await self.redis.xrevrange(self.keys.events, count=1)
        return str(rows[0][0]) if rows else "0-0"


def _counts(reply: list[Any]) -> InboxCounts:
    """``{urgent, high, normal, low, in_flight}`` from the script as :class:`InboxCounts`."""
    lengths = [int(n) for n in reply]
    return InboxCounts(pending=sum(lengths[:4]), urgent=lengths[0], in_flight=lengths[4])


def _message_from_row(row: str, message_id: str | None = None) -> Message:
    # one JSON record (the stored form leaves out the id, which is in its key; the receive
    # script returns it beside the record); ``from`` is the field's alias; unknown internal fields
    # (``attempt``, ``batch``, ``thread``) are ignored.
    data = json.loads(row)
    if message_id is not None:
        data["id"] = message_id
    return Message.model_validate(data)


def _event(eid: str, fields: dict[str, str]) -> Event:
    ms = int(str(eid).split("-", 1)[0])
    return Event(id=str(eid), type=fields.get("type", ""), at=ms, data=json.loads(fields.get("data", "{}")))


def stop_if_cancelled() -> None:
    """End a loop that waits forever (``--watch``, ``--follow``) once its task was asked to
    stop.

    ``asyncio.run`` cancels the task once on Ctrl-C; redis-py can swallow a cancellation that
    lands while a command is in flight, and the loop would then go on waiting.  The task
    still counts the request (``cancelling()``), so each turn of such a loop checks it.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on an asyncio loop
        return
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
