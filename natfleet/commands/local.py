"""``natfleet local``: this machine's translations, netstat-nat compatible.

Example:
    $ sudo natfleet local -nN -p tcp
    Proto NATed Address                  NAT-host Address               Destination ...
    tcp   198.18.1.10:40000              198.51.100.11:40000            203.0.113.5:443 ...
    $ natfleet local -n --input saved-table.txt -p udp --format json
"""

from __future__ import annotations

import argparse
import itertools
import sys

from natfleet import agent
from natfleet.answer import AnswerError, check_malformed
from natfleet.commands.flowopts import (
    NETSTAT_EPILOG,
    add_flow_options,
    request_from_args,
    style_from_args,
)
from natfleet.commands.report import malformed_notes, say_footer
from natfleet.errors import ExitCode, TableError, UsageError
from natfleet.invocation import rerun_as_root, root_command
from natfleet.output import warn, write_lines
from natfleet.render import netstat_header, netstat_row, write_flows

EXAMPLES = """examples:
  {root} local -nN              every translation, with the NAT-host column
  {root} local -n -p tcp -S -r dst-port
  {root} local -n -L            connections to the box itself
  natfleet local -n --input table.txt  a saved /proc/net/nf_conntrack or conntrack -L dump
  {root} local -n --format jsonl   one JSON object per connection (status, state, flags)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "local",
        help="this machine's translations (netstat-nat compatible)",
        description="Read this machine's conntrack table (or a saved dump) and print every "
        "translated connection, netstat-nat style. " + NETSTAT_EPILOG,
        epilog=EXAMPLES.format(root=root_command()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flow_options(parser)
    parser.add_argument(
        "--input",
        metavar="FILE",
        help="read a saved table (/proc/net/nf_conntrack or conntrack -L output; - for stdin)",
    )
    parser.set_defaults(func=run)


def sources_for(path: str | None) -> agent.LocalSources | agent.DumpSources:
    """The live machine, or a saved dump (auto-detected format) for ``--input``."""
    if path is None:
        return agent.LocalSources("/")
    if path != "-":
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"--input {path}: {exc.strerror}") from None
    return agent.DumpSources(table_file=path)


def serve(request: dict, sources: agent.LocalSources | agent.DumpSources, project=None):
    """Run the agent in-process; its errors become natfleet errors."""
    try:
        return agent.run(agent.Request(request), sources, project)
    except agent.AgentError as exc:
        if exc.kind == "bad_request":
            raise UsageError(str(exc)) from None
        if exc.kind == "permission":  # this machine's table: say the command that works
            raise TableError(f"{exc}: {rerun_as_root()}") from None
        raise TableError(str(exc)) from None


LOCAL_META = ("hostname", "source", "count", "max", "lines", "matched", "warnings", "names")


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    style = style_from_args(args)
    out = sys.stdout
    fmt = args.format or "netstat"
    if fmt == "netstat" and args.numeric:
        # rows are rendered where they are parsed, so a big table can use several cores
        key = agent.sort_key(args.sort or "src")
        answer, pairs = serve(
            request, sources_for(args.input), lambda f: (key(f), netstat_row(f, style))
        )
        lines = (pair[1] for pair in pairs)
        write_lines(out, itertools.chain([netstat_header(style)] if style.header else [], lines))
    else:
        answer, flows = serve(request, sources_for(args.input))
        style.names = answer.get("names") or {}  # this machine's own lookups
        try:
            malformed = check_malformed(answer["malformed"]).count
        except AnswerError:
            malformed = None
        meta = {k: answer.get(k) for k in LOCAL_META}
        meta["malformed"] = malformed
        write_flows(out, fmt, flows, style, command="local", wide=args.wide, meta=meta)
    for warning in answer["warnings"]:
        warn(warning)
    try:
        malformed_lines = check_malformed(answer["malformed"])
    except AnswerError as exc:  # the agent's own output: a bug if it ever happens
        raise TableError(f"internal error in the malformed-line count: {exc}") from None
    footer, details = malformed_notes(malformed_lines, answer["lines"], answer["source"])
    for line in details:
        warn(line)
    if footer:
        say_footer(footer, out if fmt in ("netstat", "table") else None)
    return ExitCode.OK
