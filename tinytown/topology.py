"""How a Redis URL becomes a client: one server, a Redis Cluster, or a Sentinel-managed primary.

- ``redis://`` / ``rediss://`` (TLS) naming any node of a **Redis Cluster** (a primary, a
  replica, a node that does not serve the town's slot): :func:`open_client` asks the node
  ``INFO cluster`` once and, when ``cluster_enabled:1``, returns redis-py's
  :class:`~redis.asyncio.RedisCluster`, which follows ``MOVED``/``ASK`` and refreshes its slot
  map after a failover.  All keys of a town carry the hash tag ``{town}`` (:mod:`tinytown.keys`),
  so a town lives in one slot: its Lua script, its pipelines and its ``BLPOP`` all go to the
  one node that serves that slot.
- ``redis+sentinel://[user:pass@]host:port[,host:port…]/SERVICE[/db][?options]`` (and
  ``rediss+sentinel://`` for TLS to the Sentinels and the servers): redis-py's
  :class:`~redis.asyncio.sentinel.Sentinel` finds the primary of ``SERVICE`` and finds it
  again after a failover.  ``user:pass`` are the servers' credentials; Sentinels that ask for
  their own give them as ``sentinel_username=`` / ``sentinel_password=``.  Other query options
  are redis-py's connection options (``ssl_ca_certs=…``, ``socket_timeout=…``).

A failover costs a few seconds in which calls answer ``unavailable``;
:func:`failing_over` tells such an error from one that will not heal by itself, and
:func:`rides_failovers` tells a client that can move to a new primary (Channel.receive waits
through a failover instead of failing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.exceptions as rx
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url

from tinytown.masking import mask_url

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class TownCluster(RedisCluster):  # type: ignore[misc]  # redis is untyped here (pyproject)
    """redis-py's cluster client, whose own retry (a slot-map refresh each time) covers a
    refused connection and a cluster that is down for a moment, never a timeout: a stalled
    node answers ``unavailable`` within the call bound, not after several."""

    ERRORS_ALLOW_RETRY = (rx.ConnectionError, rx.ClusterDownError, rx.SlotNotCoveredError)

    def __init__(self, *args: Any, ssl_ca_path: str | None = None, ssl_password: str | None = None,
                 **kwargs: Any) -> None:
        """redis-py's cluster client takes every TLS option of its one-server client but
        ``ssl_ca_path`` and ``ssl_password`` (a ``rediss://`` URL with them, accepted for one
        server, failed with a ``TypeError`` on a cluster): they are given here to the
        connections of every node, the one the URL names and those the slot map names later."""
        super().__init__(*args, **kwargs)
        given = {"ssl_ca_path": ssl_ca_path, "ssl_password": ssl_password}
        extra = {k: v for k, v in given.items() if v is not None}
        if extra and self.connection_kwargs.get("connection_class") is SSLConnection:
            # the options each node found later is made with (the NodesManager's, shared)
            self.connection_kwargs.update(extra)
            self.nodes_manager.connection_kwargs.update(extra)
            for node in self.nodes_manager.startup_nodes.values():
                node.connection_kwargs.update(extra)


class SentinelRedis(Redis):  # type: ignore[misc]
    """A client of the primary a :class:`Sentinel` names; closing it closes the Sentinel
    connections too."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            await self.sentinel.aclose()


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL (see the module docstring)."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """redis-py connection options for the servers (credentials, TLS, timeouts)."""
    sentinel_options: dict[str, Any] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse ``redis+sentinel://[user:pass@]h:p[,h:p…]/SERVICE[/db][?options]``.

    Raises:
        ValueError: what is wrong (the message never holds the password).
    """
    shown = mask_url(url)
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    sentinels: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{shown}: {item!r} is not host:port")
        sentinels.append((host, int(port)))
    if not sentinels:
        raise ValueError(f"{shown} names no Sentinel (redis+sentinel://host:port[,host:port…]/SERVICE)")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or not _SERVICE_RE.match(parts[0]):
        raise ValueError(f"{shown} names no service (redis+sentinel://host:port/SERVICE[/db])")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"{shown}: the database {parts[1]!r} is not a number")
    tls = scheme.lower() == "rediss+sentinel"
    # the rest is what redis-py parses for one server: credentials, TLS and socket options
    pairs = parse_qsl(query, keep_blank_values=True)
    sentinel_options = {k.removeprefix("sentinel_"): v for k, v in pairs if k in _SENTINEL_ONLY}
    plain_query = "&".join(f"{k}={v}" for k, v in parse_qsl(query) if k not in _SENTINEL_ONLY)
    server_url = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if at else ''}127.0.0.1"
    options = parse_url(server_url + ("?" + plain_query if plain_query else ""))
    options.pop("host", None)
    options.pop("port", None)
    options.pop("connection_class", None)
    for name in ("username", "password"):
        if name in options:
            options[name] = unquote(options[name])
    return SentinelUrl(
        sentinels=sentinels, service=parts[0], db=int(parts[1]) if len(parts) == 2 else 0, tls=tls,
        options=options, sentinel_options=sentinel_options,
    )


def check_sentinel_url(url: str) -> None:
    """Refuse a Sentinel URL that cannot work (its options are built into a connection
    object, without I/O, as for one server).

    Raises:
        ValueError, TypeError: what is wrong.
    """
    import redis

    parsed = parse_sentinel_url(url)
    connection = redis.SSLConnection if parsed.tls else redis.Connection
    pool = redis.ConnectionPool(connection_class=connection, **parsed.options)
    pool.make_connection()


def sentinel_client(url: str, client_options: dict[str, Any]) -> SentinelRedis:
    """A client of the primary of the URL's service, found (and found again after a
    failover) through its Sentinels."""
    parsed = parse_sentinel_url(url)
    tls = {k: v for k, v in parsed.options.items() if k.startswith("ssl")}
    if parsed.tls:
        tls["ssl"] = True
    sentinel = Sentinel(
        parsed.sentinels,
        sentinel_kwargs={
            "socket_timeout": client_options["socket_timeout"],
            "socket_connect_timeout": client_options["socket_connect_timeout"],
            # our bounded retry, not redis-py's default (a refused TLS handshake was retried
            # for 25 s before the error came)
            "retry": client_options["retry"],
            "decode_responses": True, **tls, **parsed.sentinel_options,
        },
    )
    options = {**client_options, **parsed.options, "db": parsed.db}
    if parsed.tls:
        options["ssl"] = True
    client: SentinelRedis = sentinel.master_for(parsed.service, redis_class=SentinelRedis, **options)
    client.sentinel = sentinel
    return client


async def open_client(url: str, client_options: dict[str, Any]) -> Any:
    """A connected client for ``url``: a :class:`TownCluster` when the node it names is part
    of a Redis Cluster, a :class:`SentinelRedis` for a Sentinel URL, else a plain client.

    Raises:
        redis.RedisError: the server cannot be reached or refuses us.
    """
    if is_sentinel_url(url):
        client = sentinel_client(url, client_options)
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return client
    plain = Redis.from_url(url, **client_options)
    try:
        enabled = str((await plain.info("cluster")).get("cluster_enabled", "0")) == "1"
    except rx.ResponseError:
        # INFO refused (an ACL without it): a server that answers PING is used as it is
        enabled = False
        await plain.ping()
    except BaseException:
        await plain.aclose()
        raise
    if not enabled or url.lower().startswith("unix:"):
        return plain
    await plain.aclose()
    # the cluster's own retries (each after a slot-map refresh): a refused connection to a
    # primary that died, until the map names its successor; the Channel waits out the rest
    options = {**client_options, "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)}
    cluster = TownCluster.from_url(url, **options)
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def rides_failovers(client: Any) -> bool:
    """Whether ``client`` finds a new primary by itself (a cluster or Sentinel client)."""
    return isinstance(client, (RedisCluster, SentinelRedis))


def failing_over(exc: BaseException) -> bool:
    """Whether ``exc`` (a redis-py error) is what a primary that is being replaced gives: a
    refused or dropped connection, a cluster without a primary for the slot for a moment,
    a demoted primary, a blocked command unblocked by the change — never a timeout."""
    if isinstance(exc, rx.TimeoutError) or "Timeout" in str(exc):
        return False
    if isinstance(exc, (rx.ConnectionError, rx.ClusterDownError, rx.TryAgainError,
                        rx.SlotNotCoveredError, rx.MovedError, rx.AskError, rx.ReadOnlyError,
                        rx.BusyLoadingError, rx.MasterDownError)):
        return True
    text = str(exc)
    return text.startswith(("UNBLOCKED", "MASTERDOWN", "LOADING", "READONLY", "CLUSTERDOWN", "TRYAGAIN"))


async def town_node_call(client: Any, key: str, *args: Any) -> Any:
    """Run a command without keys (``TIME``, ``INFO``) on the server that holds ``key``: on a
    cluster, the node serving the town's slot (its clock decides script deadlines)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        return await client.execute_command(*args, target_nodes=client.get_node_from_key(key))
    return await client.execute_command(*args)


async def cluster_server_info(client: Any, key: str) -> dict[str, Any] | None:
    """``INFO server`` of the node serving ``key``'s slot (``None``: refused by an ACL)."""
    try:
        info: dict[str, Any] = await town_node_call(client, key, "INFO", "server")
    except rx.ResponseError:
        return None
    return info


async def scan_town(client: Any, key: str, match: str, count: int = 500) -> list[str]:
    """Every key matching ``match`` on the server that holds ``key`` (SCAN, never KEYS)."""
    if not isinstance(client, RedisCluster):
        return [k async for k in client.scan_iter(match=match, count=count)]
    await client.initialize()
    node = client.get_node_from_key(key)
    found: list[str] = []
    cursor = 0
    while True:
        cursor, keys = await node.execute_command("SCAN", cursor, "MATCH", match, "COUNT", count)
        found += keys
        if int(cursor) == 0:
            return found
