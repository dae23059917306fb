"""Reading a spawned agent's round logs: what ``tt logs`` and the dashboard show.

Each runner round appends its CLI's output to ``.tt/logs/<agent>.round-<n>.log``
(:func:`tinytown.processes.round_logs` knows the names); numbers are never reused, so a
crashed round's log stays as it was.  :func:`choose_round` picks the round to show,
:class:`LogTail` reads what is appended to one log (a follower), :func:`read_chunk` reads a
window of a log by byte offset (a web page asking again and again).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinytown.errors import Invalid, NotFound
from tinytown.models import AGENT_NAME_RE, normalise_agent_name
from tinytown.processes import round_logs

if TYPE_CHECKING:
    from tinytown.config import TownPaths
    from tinytown.town import Town

TAIL_BYTES = 64 * 1024
"""How much of a log's end a first read shows."""


@dataclass(frozen=True)
class RoundChoice:
    """The round to show (0: none has a log yet) among the agent's rounds with a log."""

    agent: str
    round: int
    rounds: dict[int, Path]
    paths: TownPaths

    @property
    def path(self) -> Path | None:
        return self.rounds.get(self.round)


async def choose_round(
    town: Town, agent: str, round_number: int | None = None, *, none_yet_ok: bool = False
) -> RoundChoice:
    """The agent's round ``round_number``, else its newest.

    Raises:
        Invalid: not an agent name, or a town without a directory.
        NotFound: no such agent, no such round, or (unless ``none_yet_ok``) no round yet.
    """
    name = normalise_agent_name(agent)
    if not AGENT_NAME_RE.match(name):
        raise Invalid(f"{agent!r} is not an agent name")
    await town.get_agent(name)  # not_found for an unknown agent
    if town.paths is None:
        raise Invalid("round logs live in a town directory; this town has none")
    rounds = round_logs(town.paths, name)
    if round_number is not None and round_number not in rounds:
        have = ", ".join(str(n) for n in rounds) or "none yet"
        raise NotFound(f"{name} has no round {round_number} (rounds with a log: {have})")
    if not rounds and not none_yet_ok:
        raise NotFound(f"{name} has not run a round yet (no {name}.round-N.log in {town.paths.logs})")
    chosen = round_number if round_number is not None else max(rounds, default=0)
    return RoundChoice(agent=name, round=chosen, rounds=rounds, paths=town.paths)


def newest_round(paths: TownPaths, agent: str) -> int:
    """The newest round with a log (0: none yet)."""
    return max(round_logs(paths, agent), default=0)


class LogTail:
    """What is appended to one log, decoding UTF-8 across chunk boundaries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self) -> str:
        """The text appended since the last read ("" for none, or a log not there yet)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return ""
        self.offset += len(chunk)
        return self.decoder.decode(chunk)


@dataclass(frozen=True)
class LogChunk:
    """Text of a log from byte ``start`` to ``end`` (where the next read starts)."""

    text: str
    start: int
    end: int
    size: int


def read_chunk(path: Path, offset: int | None = None, max_bytes: int = TAIL_BYTES) -> LogChunk:
    """The log from byte ``offset`` (``None``: its last ``max_bytes``), at most ``max_bytes``,
    ending on a whole UTF-8 character (an incomplete one is left for the next read)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            start = max(0, size - max_bytes) if offset is None else min(max(0, offset), size)
            handle.seek(start)
            chunk = handle.read(max_bytes)
    except FileNotFoundError:
        return LogChunk(text="", start=0, end=0, size=0)
    cut = _whole_characters(chunk)
    text = chunk[:cut].decode("utf-8", errors="replace")
    return LogChunk(text=text, start=start, end=start + cut, size=size)


def _whole_characters(chunk: bytes) -> int:
    """The length of ``chunk`` without an incomplete UTF-8 sequence at its end."""
    for back in range(1, min(4, len(chunk)) + 1):
        byte = chunk[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead
            continue
        if byte & 0x80 == 0:
            return len(chunk)
        needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(chunk) if back >= needed else len(chunk) - back
    return len(chunk)
