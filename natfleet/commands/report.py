"""What every fleet command does after printing: problems on stderr, and the exit code.

Example:
    >>> report_problems(results, sys.stdout)   # footers on stdout, details on stderr
    >>> exit_code(results)                     # 0 all answered, 3 some failed, 1 none
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional, TextIO

from natfleet.errors import ExitCode
from natfleet.models import HostError, HostResult
from natfleet.render import malformed_notes
from natfleet.text import printable


def report_problems(
    results: Sequence[HostResult | HostError], footer_to: Optional[TextIO] = None
) -> None:
    """A stderr line per failed box and per malformed line; malformed footers also go to
    ``footer_to`` (the text output) so a short table is never silent."""
    for result in results:
        label = result.target.label
        if isinstance(result, HostError):
            print(f"natfleet: {label}: {result.kind}: {result.message}", file=sys.stderr)
            continue
        footer, details = malformed_notes(result.answer, label)
        for line in details:
            print(line, file=sys.stderr)
        if footer:
            print(footer, file=sys.stderr)
            if footer_to is not None:
                print(footer, file=footer_to)
        for warning in result.answer.get("warnings") or ():
            print(f"natfleet: {label}: {printable(str(warning))}", file=sys.stderr)


def exit_code(results: Sequence[HostResult | HostError]) -> int:
    """0 when every target answered, 3 when some failed, 1 when all failed."""
    failed = sum(isinstance(r, HostError) for r in results)
    if not failed:
        return ExitCode.OK
    return ExitCode.ERROR if failed == len(results) else ExitCode.PARTIAL
