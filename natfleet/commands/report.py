"""What every fleet command does around its table: progress while boxes answer, problems on
stderr afterwards, and the exit code. Everything is written through natfleet.output.

Example:
    >>> from natfleet import api
    >>> from natfleet.models import HostError, Target
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/malformed/bad-port.txt"])
    >>> results = api.read_fleet(targets, api.summary_request())
    >>> report_problems(results, io.StringIO())  # not a terminal: the footer goes to stderr
    >>> exit_code(results), exit_code(results + [HostError(Target("nat-b"), "refused")])
    (<ExitCode.OK: 0>, <ExitCode.PARTIAL: 3>)
"""

from __future__ import annotations

import io  # noqa: F401 (the examples use it)
import sys  # noqa: F401
from collections.abc import Sequence
from typing import Optional, TextIO

from natfleet.answer import MalformedLines
from natfleet.fleet import Outcome
from natfleet.models import HostError, exit_code  # noqa: F401 (the commands' exit code)
from natfleet.output import is_terminal, warn


def report_problems(
    results: Sequence[Outcome],
    footer_to: Optional[TextIO] = None,
    *,
    out: Optional[TextIO] = None,
) -> None:
    """What went wrong, said once. A failed box is a row of the output in every format, so
    it is said on stderr too only when the output (``out``, else ``footer_to``, else
    stdout) is not a terminal (a pipe or a file: the person reads stderr). A malformed-lines
    footer goes under the text table (``footer_to``) when that is a terminal, else to
    stderr; their details and the boxes' warnings always go to stderr."""
    stdout = out or footer_to or sys.stdout
    on_terminal = is_terminal(stdout)
    for result in results:
        label = result.target.label
        if isinstance(result, HostError):
            if not on_terminal:
                warn(f"{label}: {result.kind}: {result.message}")
            continue
        answer = result.answer
        footer, details = malformed_notes(
            answer.malformed, answer.lines, answer.facts.source, label
        )
        for line in details:
            warn(line)
        if footer:
            say_footer(footer, footer_to)
        for warning in result.answer.warnings:
            warn(f"{label}: {warning}")


def say_footer(footer: str, footer_to: Optional[TextIO]) -> None:
    """A footer under the text output when it is a terminal, else on stderr: once."""
    if footer_to is not None and is_terminal(footer_to):
        warn(footer, out=footer_to)
    else:
        warn(footer)


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
