"""Connecting a town to its Redis: an external URL, or the managed server in ``.tt/``."""

from __future__ import annotations

import anyio
from redis.asyncio import Redis

from tinytown.config import TownConfig, TownPaths
from tinytown.errors import Unavailable, wrap_redis_errors
from tinytown.masking import mask_url
from tinytown.redis_server import ManagedRedis

# Blocking receives wait up to 300 s in slices of 10 s; redis-py 8 would cut any command
# at 5 s by default, so reads never time out on the client side (None).
CONNECT_TIMEOUT_S = 5.0


def managed_redis(config: TownConfig, paths: TownPaths) -> ManagedRedis:
    return ManagedRedis(paths.runtime, durability=config.redis.durability, server=config.redis.server)


def client_for_url(url: str) -> Redis:
    """A client for a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL with credentials."""
    return Redis.from_url(
        url, decode_responses=True, socket_timeout=None, socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )


async def connect_redis(config: TownConfig, paths: TownPaths, *, start: bool = True) -> tuple[Redis, str]:
    """Return a connected client and the masked address to show.

    Without a configured URL this starts the town's managed ``redis-server`` when it is not
    running (``start``), or reports it down.

    Raises:
        Unavailable: Redis cannot be reached, or the managed server cannot be started.
    """
    if config.redis.url:
        client = client_for_url(config.redis.url)
        display = mask_url(config.redis.url) or ""
    else:
        server = managed_redis(config, paths)
        if start:
            await anyio.to_thread.run_sync(server.ensure_running)
        elif not await anyio.to_thread.run_sync(server.is_running):
            raise Unavailable(f"the managed Redis of {paths.root} is not running; start it with `tt up`")
        client = Redis(
            unix_socket_path=server.connect_path(), decode_responses=True, socket_timeout=None,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        display = f"managed {server.url}"
    try:
        async with wrap_redis_errors():
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client, display
