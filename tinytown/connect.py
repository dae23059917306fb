"""Connecting a town to its Redis: an external URL, or the managed server in ``.tt/``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tinytown.channel import CALL_TIMEOUT_S
from tinytown.config import TownConfig, TownPaths
from tinytown.errors import Unavailable, wrap_redis_errors
from tinytown.masking import mask_url
from tinytown.topology import open_client

if TYPE_CHECKING:
    from tinytown.redis_server import ManagedRedis

# Every call is bounded: a stalled or unreachable Redis gives ``unavailable`` within
# CALL_TIMEOUT_S, and the next call reconnects by itself.  Blocking commands wait in slices
# shorter than that (channel.BLOCK_SLICE_S).  redis-py 8 retries timeouts and dropped
# connections ten times by default, which turns a 5 s bound into a minute: here a call is
# retried once, and only when its connection dropped (the town script makes that retry
# harmless: a send already stored and a receive already answered are not done twice, and a
# script that runs past its deadline changes nothing).
CONNECT_TIMEOUT_S = 5.0

T = TypeVar("T")


class RetryDroppedOnly(Retry):  # type: ignore[misc]  # redis is untyped here (pyproject)
    """Retry a call after its connection dropped, never after a timeout: redis-py reports a
    timeout while a new connection says hello as a ``ConnectionError``, and retrying that
    would double the bound."""

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None, with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            return "Timeout" not in str(error) and (is_retryable is None or is_retryable(error))

        result: T = await super().call_with_retry(do, fail, retryable, with_failure_count)
        return result


def client_options() -> dict[str, Any]:
    """The bounds every Tinytown Redis client gets."""
    return {
        "decode_responses": True, "socket_timeout": CALL_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": RetryDroppedOnly(
            ExponentialBackoff(cap=0.5, base=0.05), 1, supported_errors=(RedisConnectionError,)
        ),
    }


def managed_redis(config: TownConfig, paths: TownPaths) -> ManagedRedis:
    from tinytown.redis_server import ManagedRedis  # not needed for an external URL

    return ManagedRedis(paths.runtime, durability=config.redis.durability, server=config.redis.server)


async def client_for_url(url: str) -> Any:
    """A connected client for a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL with
    credentials — a cluster client when it names a node of a Redis Cluster — or for a
    ``redis+sentinel://`` / ``rediss+sentinel://`` URL (see :mod:`tinytown.topology`).

    No ``health_check_interval``: with it, a server that refuses the connection's credentials
    made redis-py's health check and our one retry call each other forever (``tt status``
    hung instead of answering ``unavailable``); a dropped connection is retried once anyway.

    Raises:
        Unavailable: Redis cannot be reached or refuses us.
    """
    async with wrap_redis_errors():
        return await open_client(url, client_options())


async def connect_redis(config: TownConfig, paths: TownPaths, *, start: bool = True) -> tuple[Redis, str]:
    """Return a connected client and the masked address to show.

    Without a configured URL this starts the town's managed ``redis-server`` when it is not
    running (``start``), or reports it down.

    Raises:
        Unavailable: Redis cannot be reached, or the managed server cannot be started.
    """
    if config.redis.url:
        return await client_for_url(config.redis.url), mask_url(config.redis.url) or ""
    server = managed_redis(config, paths)
    if start:
        await anyio.to_thread.run_sync(server.ensure_running)
    elif not await anyio.to_thread.run_sync(server.is_running):
        raise Unavailable(f"the managed Redis of {paths.root} is not running; start it with `tt up`")
    client = Redis(unix_socket_path=server.connect_path(), **client_options())
    display = f"managed {server.url}"
    try:
        async with wrap_redis_errors():
            await client.ping()
    except Unavailable as error:
        await client.aclose()
        raise managed_hint(error) if not config.redis.url else error from error.__cause__
    except BaseException:
        await client.aclose()
        raise
    return client, display


def managed_hint(error: Unavailable) -> Unavailable:
    """``error`` with ``try `tt up``` added when Redis could not be reached: only for a
    town's managed server (for an external URL it would do nothing)."""
    if not error.message.startswith("cannot reach Redis"):
        return error
    return Unavailable(f"{error.message} try `tt up`")
