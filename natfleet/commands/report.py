"""What every fleet command does around its table: progress while boxes answer, problems on
stderr afterwards, and the exit code. Everything is written through natfleet.output.

Example:
    >>> from natfleet import api
    >>> from natfleet.models import HostError, Target
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/malformed/bad-port.txt"])
    >>> results = api.read_fleet(targets, api.summary_request())
    >>> report_problems(results, sys.stdout)   # footers on stdout (and stderr), details on stderr
    ... # doctest: +NORMALIZE_WHITESPACE
    natfleet: 1 malformed conntrack line(s) on tests/data/malformed/bad-port.txt skipped
    (of 1 read from tests/data/malformed/bad-port.txt)
    >>> exit_code(results), exit_code(results + [HostError(Target("nat-b"), "refused")])
    (<ExitCode.OK: 0>, <ExitCode.PARTIAL: 3>)
"""

from __future__ import annotations

import io  # noqa: F401 (the examples use it)
import sys  # noqa: F401
from collections.abc import Sequence
from typing import Optional, TextIO

from natfleet.answer import MalformedLines
from natfleet.errors import ExitCode
from natfleet.fleet import Outcome, Progress
from natfleet.models import HostError
from natfleet.output import warn


def report_problems(results: Sequence[Outcome], footer_to: Optional[TextIO] = None) -> None:
    """A stderr line per failed box, per malformed line and per warning; malformed footers
    also go to ``footer_to`` (the text output) so a short table is never silent."""
    for result in results:
        label = result.target.label
        if isinstance(result, HostError):
            warn(f"{label}: {result.kind}: {result.message}")
            continue
        answer = result.answer
        footer, details = malformed_notes(
            answer.malformed, answer.lines, answer.facts.source, label
        )
        for line in details:
            warn(line)
        if footer:
            warn(footer)
            if footer_to is not None:
                warn(footer, out=footer_to)
        for warning in result.answer.warnings:
            warn(f"{label}: {warning}")


def malformed_notes(
    malformed: MalformedLines, lines: int, source: Optional[str], label: str = ""
) -> tuple[Optional[str], list[str]]:
    """(footer for the output, detail lines for stderr) about skipped malformed lines; the
    output layer escapes and caps what they quote.

    >>> footer, details = malformed_notes(MalformedLines(1, ((7, "ipv4 2 tcp"),)), 9, "dump.txt")
    >>> footer
    '1 malformed conntrack line(s) skipped (of 9 read from dump.txt)'
    >>> details
    ["malformed line 7: 'ipv4 2 tcp'"]
    """
    if not malformed.count:
        return None, []
    where = f" on {label}" if label else ""
    footer = (
        f"{malformed.count} malformed conntrack line(s){where} skipped "
        f"(of {lines} read from {source})"
    )
    details = [f"malformed line {n}{where}: {text!r}" for n, text in malformed.examples]
    return footer, details


def exit_code(results: Sequence[Outcome]) -> ExitCode:
    """0 when every target answered, 3 when some failed, 1 when all failed."""
    failed = sum(isinstance(r, HostError) for r in results)
    if not failed:
        return ExitCode.OK
    return ExitCode.ERROR if failed == len(results) else ExitCode.PARTIAL


def tty_progress(stream: TextIO) -> Optional[Progress]:
    """A progress callback keeping one updating line on ``stream``, or None when it is not
    a terminal (pipes and files get no progress text).

    >>> tty_progress(io.StringIO()) is None     # on a terminal: "natfleet: 3/20 boxes answered"
    True
    """
    if not stream.isatty():
        return None

    def show(done: int, total: int, failed: int) -> None:
        line = f"natfleet: {done}/{total} boxes answered"
        if failed:
            line += f", {failed} failed"
        stream.write("\r\x1b[K" + line + ("\n" if done == total else ""))
        stream.flush()

    return show
