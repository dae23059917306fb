"""The one exception tree of Tinytown.

    TinytownError              code        meaning
    ├── NotFound               not_found   no such agent, task, message or town
    ├── Invalid                invalid     bad input: a name, a size limit, a config key
    ├── Forbidden              forbidden   the caller may not do this (not its task or inbox)
    ├── Conflict               conflict    the state moved on: illegal task move, late report,
    │                                      name taken, a newer session owns the mailbox
    └── Unavailable            unavailable Redis down or unreachable, redis-server missing

Every error carries a stable ``code``; the MCP server prefixes its error text with
``"<code>: "`` and the CLI prints the same line.  ``redis.RedisError`` never leaks out of the
library: :func:`wrap_redis_errors` turns it into :class:`Unavailable`.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import redis.exceptions


class TinytownError(Exception):
    """Base of every error Tinytown raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFound(TinytownError):
    code = "not_found"


class Invalid(TinytownError):
    code = "invalid"


class Forbidden(TinytownError):
    code = "forbidden"


class Conflict(TinytownError):
    code = "conflict"


class Unavailable(TinytownError):
    code = "unavailable"


class StaleRead(Conflict):
    """A guarded write found the record changed since it was read; read again and retry.

    Raised by a plan guard whose code is ``retry``; never leaves the library.
    """


ERRORS_BY_CODE: dict[str, type[TinytownError]] = {
    cls.code: cls for cls in (NotFound, Invalid, Forbidden, Conflict, Unavailable)
}


def error_from_reply(text: str) -> TinytownError:
    """Turn a Lua ``error_reply`` of the form ``"<code>: <sentence>"`` into our exception."""
    code, _, rest = text.partition(": ")
    if code.strip() == "retry":
        return StaleRead(rest)
    cls = ERRORS_BY_CODE.get(code.strip())
    if cls is None:
        return Unavailable(f"unexpected Redis reply: {text}")
    return cls(rest)


def translate_redis_error(exc: redis.exceptions.RedisError) -> TinytownError:
    """The :class:`TinytownError` for a ``redis.RedisError`` (Lua replies keep their code)."""
    refused = ("invalid username-password", "WRONGPASS", "NOAUTH", "Authentication required")
    if isinstance(exc, redis.exceptions.AuthenticationError) or any(r in str(exc) for r in refused):
        return Unavailable(
            "Redis refused the credentials; check the password of the Redis URL (in REDIS_URL, "
            "or tinytown.toml when stored there)"
        )
    if isinstance(exc, redis.exceptions.ResponseError):
        text = str(exc)
        if text.split(":", 1)[0].strip() in (*ERRORS_BY_CODE, "retry"):
            return error_from_reply(text)
        return Unavailable(f"Redis refused the command: {text}")
    if type(exc).__name__ == "MasterNotFoundError":  # redis-py's Sentinel: a long repr per Sentinel
        text = str(exc)
        service = text.partition(" : ")[0].removeprefix("No master found for ")
        tried = [f"{h}:{p}" for h, p in re.findall(r"host=([^,]+),port=(\d+)", text)]
        why = re.findall(r"\)> - ([^,<]+)", text)
        detail = "; ".join(f"{t}: {w.strip()}" for t, w in zip(tried, why, strict=False)) or (
            "the Sentinels answered, but none names a primary that is up")
        return Unavailable(f"no Sentinel names a reachable primary of {service} ({detail})")
    refused_at = re.fullmatch(r"Error (-?\d+) connecting to (.+?)\. (.*?)\.?", str(exc), re.S)
    if refused_at:  # redis-py's "Error 111 connecting to h:p. Connect call failed ('h', p)."
        number, where, text = int(refused_at[1]), refused_at[2], refused_at[3]
        reason = os.strerror(number) if number > 0 else text  # < 0: a resolver error, said in text
        where = where.replace("unix socket: ", "unix socket ")
        return Unavailable(f"cannot reach Redis at {where} ({reason[:1].lower()}{reason[1:]}); "
                           "is it running?")
    return Unavailable(f"cannot reach Redis ({type(exc).__name__}: {exc}); is it running?")


@asynccontextmanager
async def wrap_redis_errors() -> AsyncIterator[None]:
    """Re-raise any ``redis.RedisError`` inside the block as a :class:`TinytownError`."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise translate_redis_error(exc) from exc


@contextmanager
def wrap_redis_errors_sync() -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise translate_redis_error(exc) from exc
