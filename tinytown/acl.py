"""The Redis ACL a town needs: its key pattern and the exact commands Tinytown sends.

A company's Redis gives each application a user of its own.  A town needs:

- the keys ``tt:{TOWN}:*`` (:mod:`tinytown.keys`; ``{`` and ``}`` are plain characters in an
  ACL pattern) — ``~tt:*`` for a user that runs several towns;
- the commands of :data:`TOWN_COMMANDS`: those the client sends, and those the town's Lua
  script calls (Redis checks a script's calls against the user's rules too);
- on a Redis Cluster also :data:`CLUSTER_COMMANDS` (how redis-py learns the slot map).

``tests/test_deploy.py`` creates a user with exactly these rules on a private server and on
a cluster and runs a town's whole workload through it, and checks that every command the Lua
script calls is listed.  The README's ACL line is :func:`acl_setuser_line`.
"""

from __future__ import annotations

CLIENT_COMMANDS = (
    "PING", "INFO", "TIME", "SELECT",
    "EVALSHA", "SCRIPT|LOAD",
    "BLPOP", "XREAD", "XREVRANGE", "XLEN", "MEMORY|USAGE",
    "GET", "SET", "DEL", "UNLINK", "INCRBY", "SCAN",
    "HGET", "HGETALL", "HMGET", "HSCAN",
    "LRANGE", "LPOS",
    "ZRANGE", "ZCARD", "ZSCORE", "ZSCAN",
)
"""What Tinytown's Python code sends (PING and INFO at connect; INFO also for ``tt status``
and ``tt stats``, MEMORY USAGE for ``tt stats``)."""

SCRIPT_COMMANDS = (
    "EXISTS", "EXPIRE", "INCR",
    "HSET", "HDEL", "HINCRBY", "HSTRLEN",
    "LLEN", "LPUSH", "RPUSH", "LPOP", "LINDEX", "LREM", "LTRIM",
    "ZADD", "ZREM", "ZRANGEBYSCORE",
    "XADD", "XTRIM",
)
"""What the town's Lua script calls beyond :data:`CLIENT_COMMANDS`."""

TOWN_COMMANDS = tuple(dict.fromkeys(CLIENT_COMMANDS + SCRIPT_COMMANDS))

CLUSTER_COMMANDS = ("CLUSTER|SLOTS", "COMMAND")


def acl_rules(town: str | None = None, *, cluster: bool = False) -> list[str]:
    """``ACL SETUSER`` rules for a town's user (``town``: one town; ``None``: every town)."""
    pattern = f"~tt:{{{town}}}:*" if town else "~tt:*"
    commands = TOWN_COMMANDS + (CLUSTER_COMMANDS if cluster else ())
    return ["resetkeys", pattern, "resetchannels", "-@all", *(f"+{c.lower()}" for c in commands)]


def acl_setuser_line(user: str = "tinytown", town: str | None = None, *, cluster: bool = False) -> str:
    """The ``ACL SETUSER`` command line for the README (password left to the reader)."""
    return " ".join(["ACL SETUSER", user, "on", ">PASSWORD", *acl_rules(town, cluster=cluster)])
