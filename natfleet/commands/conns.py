"""``natfleet conns``: every translated connection on every target, in one table.

Example:
    $ natfleet conns -n -p tcp -S                 # AWS discovery (tags, routes, src/dst check)
    $ natfleet conns -nN --host root@198.19.255.11 --host nat-b --format json
"""

from __future__ import annotations

import argparse
import sys

from natfleet.aggregate import box_meta, count_lines, error_record, merge_stream
from natfleet.commands.flowopts import (
    NETSTAT_EPILOG,
    add_flow_options,
    request_from_args,
    style_from_args,
)
from natfleet.commands.report import exit_code, report_problems
from natfleet.commands.targetopts import add_target_options, run_from_args
from natfleet.models import HostError, HostResult
from natfleet.render_stream import write_stream

EXAMPLES = """examples:
  natfleet conns -n                          every NAT instance found in AWS
  natfleet conns -nN --tag Role=nat -p tcp -S -r dst-port
  natfleet conns -n --host root@198.19.255.11 --host nat-b -d 203.0.113.5
  natfleet conns -n --local --format csv     this box, through the fleet path
  natfleet conns -n --format jsonl | jq -c 'select(.status == "UNREPLIED")'
exit codes: 0 every box answered, 1 error, 2 usage, 3 some boxes failed (rows say why)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "conns",
        help="every translated connection on every NAT box, one table",
        description="Run the agent on every target (filters apply on each box, so only "
        "matching rows travel) and print one table, the box as first column, sorted "
        "fleet-wide. " + NETSTAT_EPILOG,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flow_options(parser)
    add_target_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    results = run_from_args(args, request)
    stream = merge_stream(results, args.sort, args.limit)
    style = style_from_args(args)
    style.host_column = "Host"
    fmt = args.format or "netstat"
    errors = [error_record(r) for r in results if isinstance(r, HostError)]
    meta = {
        "filters": request["filters"],
        "sort": request["sort"],
        "limit": request["limit"],
        "boxes": [box_meta(r) for r in results if isinstance(r, HostResult)],
    }
    write_stream(
        sys.stdout,
        fmt,
        stream,
        style,
        errors,
        command="conns",
        wide=args.wide,
        meta=meta,
        counts=count_lines(results),
    )
    for late in stream.late:  # a box whose rows stopped during the merge: its error now
        results = [late if r.target is late.target else r for r in results]
    text = sys.stdout if fmt in ("netstat", "table") else None
    report_problems(results, text, out=sys.stdout)
    return exit_code(results)
