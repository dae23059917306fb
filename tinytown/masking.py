"""Keeping Redis passwords out of everything Tinytown shows or writes.

A Redis URL carries a password in any of these forms, all understood by redis-py:
``redis://:pw@host``, ``redis://user:pw@host``, ``rediss://…``, ``unix://user:pw@/path``,
``unix:///path?password=pw`` (the form for unix sockets), ``…?username=u&password=pw``,
an IPv6 host ``redis://:pw@[::1]:6379``, a Sentinel URL with several hosts
``redis+sentinel://user:pw@h1:26379,h2:26379/service?sentinel_password=pw``.
:func:`mask_url` replaces the password with ``****`` in each (and a user-info without a
``:``, which some clients read as a password), never raising on a malformed URL.

:func:`scrub` masks every Redis URL inside a longer text and every password this process has
seen (:func:`remember_url`), whatever form it was printed in; :class:`MaskingFormatter` runs
each log line through it, and the CLI and the MCP server run error text through it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, unquote_plus

MASK = "****"
SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys", "redis+sentinel", "rediss+sentinel")
# Query parameters that carry a secret, by name (decoded, lower-case).
_SECRET_PARAMS = ("password", "pass", "passwd", "pwd", "secret", "token", "auth", "requirepass")
_URL_IN_TEXT = re.compile(
    r"\b(?:" + "|".join(re.escape(s) for s in sorted(SCHEMES, key=len, reverse=True)) + r")://[^\s'\"<>`]+",
    re.IGNORECASE,
)
_MIN_SECRET = 3  # shorter strings would mask ordinary words

_secrets: set[str] = set()


def _secret_param(name: str) -> bool:
    decoded = unquote_plus(name).strip().lower()
    return decoded in _SECRET_PARAMS or "pass" in decoded or "secret" in decoded


def _split(url: str) -> tuple[str, str, str]:
    """``(scheme://, netloc, rest)`` of a URL, without validating anything."""
    scheme, sep, after = url.partition("://")
    if not sep:
        return "", "", url
    end = len(after)
    for stop in "/?#":
        found = after.find(stop)
        if found != -1:
            end = min(end, found)
    return scheme + sep, after[:end], after[end:]


def mask_url(url: str | None) -> str | None:
    """The URL with every password replaced by ``****`` (never raises)."""
    if not url:
        return url
    prefix, netloc, rest = _split(url)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    path, hash_, fragment = rest.partition("#")
    path, question, query = path.partition("?")
    if question:
        pairs = []
        for pair in re.split(r"([&;])", query):
            name, equals, _value = pair.partition("=")
            pairs.append(f"{name}={MASK}" if equals and _secret_param(name) else pair)
        query = "".join(pairs)
    return prefix + netloc + path + question + query + hash_ + fragment


def strip_password(url: str) -> str:
    """The URL without its password (user-info password, lone user-info, secret query
    parameters): what ``tt init`` writes to ``tinytown.toml`` unless told to store it."""
    prefix, netloc, rest = _split(url)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}@{host}" if colon and user else host
    path, hash_, fragment = rest.partition("#")
    path, question, query = path.partition("?")
    kept = [p for p in re.split(r"[&;]", query) if p and not _secret_param(p.partition("=")[0])]
    query = "&".join(kept)
    return prefix + netloc + path + ("?" + query if query else "") + hash_ + fragment


def url_secrets(url: str | None) -> set[str]:
    """The passwords in ``url``, raw and percent-decoded."""
    found: set[str] = set()
    if not url:
        return found
    _prefix, netloc, rest = _split(url)
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        _user, colon, password = userinfo.partition(":")
        if colon:  # a lone user-info is masked in URLs but is most likely a user name
            found.add(password)
    query = rest.partition("#")[0].partition("?")[2]
    for pair in re.split(r"[&;]", query):
        name, equals, value = pair.partition("=")
        if equals and _secret_param(name):
            found.add(value)
    decoded = {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    return {s for s in found | decoded if len(s) >= _MIN_SECRET}


def remember_url(url: str | None) -> None:
    """Remember the passwords in ``url`` so that :func:`scrub` masks them wherever they appear."""
    _secrets.update(url_secrets(url))


def scrub(text: str) -> str:
    """``text`` with every Redis URL masked and every remembered password replaced."""
    if not text:
        return text
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)) or "", text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class MaskingFormatter(logging.Formatter):
    """A formatter whose lines (message, arguments and traceback) pass through :func:`scrub`."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def mask_log_handlers(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger) a masking formatter that
    keeps its format."""
    for handler in (logger or logging.getLogger()).handlers:
        current = handler.formatter
        if not isinstance(current, MaskingFormatter):
            fmt = current._fmt if current is not None else None  # noqa: SLF001
            datefmt = current.datefmt if current is not None else None
            handler.setFormatter(MaskingFormatter(fmt, datefmt))
