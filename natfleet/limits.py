"""Bounds on what natfleet accepts from a box: a deadline per box and byte caps per answer.

A box is untrusted: it may answer forever, slowly, or with gigabytes. Every transport reads
under a :class:`Deadline` (connecting, opening the session, running and reading all count)
and hands what it reads to a sink that enforces :class:`AnswerLimits`.

Example:
    >>> d = Deadline(20.0)
    >>> 19.0 < d.left() <= 20.0
    True
    >>> AnswerLimits().for_mode("summary")
    4194304
    >>> AnswerLimits().for_mode("list", limit=100)
    1458176
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MiB = 1 << 20
MESSAGE_CAP = 2000  # characters kept of an error message (the agent's own cap is the same)


def capped(text: str, cap: int) -> str:
    """``text``, cut after ``cap`` characters with a note of how many more there were: what
    natfleet keeps of a box's free text and of an error message.

    >>> capped("x" * 30, 10)
    'xxxxxxxxxx... (20 more characters)'
    """
    if len(text) <= cap:
        return text
    return text[:cap] + f"... ({len(text) - cap:,} more characters)"


class Deadline:
    """A fixed point in time, ``seconds`` from now (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def bound(self, at_most: float, at_least: float = 0.1) -> float:
        """A socket timeout for one step: what is left, but at most ``at_most``.

        >>> Deadline(5).bound(2.0)
        2.0
        """
        return max(at_least, min(self.left(), at_most))


@dataclass(frozen=True)
class AnswerLimits:
    """Byte caps on one box's answer, counted after any decompression.

    ``summary_bytes`` bounds summary and info answers (kilobytes in practice);
    ``list_bytes`` bounds a listing without ``--limit``; with ``--limit N`` the cap is
    ``list_base_bytes + N * row_bytes`` (never more than ``list_bytes``). ``line_bytes``
    bounds one line of the answer (a header or a row), ``stderr_bytes`` what is kept of the
    box's stderr.
    """

    summary_bytes: int = 4 * MiB
    list_bytes: int = 128 * MiB
    list_base_bytes: int = 1 * MiB
    row_bytes: int = 4096
    line_bytes: int = 1 * MiB
    stderr_bytes: int = 64 * 1024

    def for_mode(self, mode: str, limit: int | None = None) -> int:
        """The cap on an answer to a request of ``mode`` (``list`` with an optional row limit)."""
        if mode != "list":
            return self.summary_bytes
        if limit is None:
            return self.list_bytes
        return min(self.list_bytes, self.list_base_bytes + limit * self.row_bytes)
