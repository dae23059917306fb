"""Bearer tokens of ``tt serve``: one token names one agent, and nothing else does.

A token is ``ttk_`` + 32 random bytes (URL-safe base64).  Only its sha256 is stored, in the
town's ``tokens`` hash (``sha256 hex -> {"agent", "created"}``), so a copy of Redis gives
nobody a token; the token is shown once, when it is made.  An agent may hold several tokens
(one per machine, say); ``revoke`` takes every token of the agent.  ``tokens_used`` records
when each token was last presented (at most once a minute per token and process, so the
hot path of a tool call costs one ``HGET``).  The agent need not exist when its token is
made: its first HTTP session registers it, as a stdio session does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tinytown.errors import NotFound, wrap_redis_errors
from tinytown.models import CONDUCTOR, normalise_agent_name

if TYPE_CHECKING:
    from tinytown.town import Town

TOKEN_PREFIX = "ttk_"
TOKEN_BYTES = 32
USED_EVERY_S = 60.0
"""How often one process records a token's ``last_used`` at most."""


class TokenInfo(BaseModel):
    """What ``tt token list`` shows: never the token, only a short id of its hash."""

    agent: str
    id: str
    """The first 12 hex digits of the token's sha256 (tells two tokens of one agent apart)."""
    created: int
    """ms on Redis's clock."""
    last_used: int | None = None


@dataclass(frozen=True)
class IssuedToken:
    agent: str
    token: str


def token_hash(token: str) -> str:
    """The sha256 hex digest a token is stored and looked up under."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token() -> str:
    raw = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()
    return TOKEN_PREFIX + raw


class Tokens:
    """The token service of a :class:`~tinytown.town.Town` (``town.tokens``)."""

    def __init__(self, town: Town) -> None:
        self.town = town
        self._used: dict[str, float] = {}  # hash -> monotonic time this process last recorded it

    def _agent_name(self, name: str) -> str:
        key = normalise_agent_name(name.strip())
        return key if key == CONDUCTOR else self.town.validate_agent_name(key)

    async def add(self, agent: str) -> IssuedToken:
        """Make a new token for ``agent`` (which need not exist yet) and return it: the only
        time it is seen.

        Raises:
            Invalid: not an agent name (or ``all``).
        """
        name = self._agent_name(agent)
        token = new_token()
        record = json.dumps({"agent": name, "created": await self.town.now_ms()})
        async with wrap_redis_errors():
            await self.town.redis.hset(self.town.keys.tokens, token_hash(token), record)
        await self.town._event("token.added", agent=name)
        return IssuedToken(name, token)

    async def list(self) -> list[TokenInfo]:
        """Every token's agent, creation and last use (by agent, then creation)."""
        keys = self.town.keys
        async with wrap_redis_errors():
            records = {h: v async for h, v in self.town.redis.hscan_iter(keys.tokens, count=500)}
            used = await self.town.redis.hmget(keys.tokens_used, list(records)) if records else []
        found = []
        for (digest, raw), last in zip(records.items(), used, strict=True):
            record = json.loads(raw)
            found.append(TokenInfo(agent=record["agent"], id=digest[:12], created=int(record["created"]),
                                   last_used=int(last) if last else None))
        return sorted(found, key=lambda t: (t.agent, t.created))

    async def revoke(self, agent: str) -> int:
        """Revoke every token of ``agent``; each is refused from its next request on.

        Raises:
            NotFound: the agent holds no token.
        """
        name = self._agent_name(agent)
        keys = self.town.keys
        async with wrap_redis_errors():
            mine = [h async for h, v in self.town.redis.hscan_iter(keys.tokens, count=500)
                    if json.loads(v).get("agent") == name]
            if mine:
                async with self.town.redis.pipeline(transaction=True) as pipe:
                    pipe.hdel(keys.tokens, *mine)
                    pipe.hdel(keys.tokens_used, *mine)
                    await pipe.execute()
        if not mine:
            raise NotFound(f"agent {name!r} holds no token; `tt token list` shows the tokens")
        await self.town._event("token.revoked", agent=name, count=len(mine))
        return len(mine)

    async def agent_of(self, token: str) -> str | None:
        """The agent ``token`` names, or ``None`` (unknown or revoked: the same answer).

        Raises:
            Unavailable: Redis does not answer.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = token_hash(token)
        keys = self.town.keys
        async with wrap_redis_errors():
            raw = await self.town.redis.hget(keys.tokens, digest)
            if raw is None:
                return None
            now = time.monotonic()
            last = self._used.get(digest)
            if last is None or now - last >= USED_EVERY_S:
                self._used[digest] = now
                await self.town.redis.hset(keys.tokens_used, digest, await self.town.now_ms())
        agent: str = json.loads(raw)["agent"]
        return agent
