"""``natfleet summary``: per box, how full the table is and who is using it.

Example:
    $ natfleet summary                        # every NAT instance found in AWS
    $ sudo natfleet summary --local --details
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from natfleet import api
from natfleet.aggregate import (
    SUMMARY_COLUMNS,
    fleet_total,
    summary_json,
    summary_record,
)
from natfleet.commands.argtypes import positive
from natfleet.commands.report import exit_code, report_problems
from natfleet.commands.targetopts import add_target_options, run_from_args
from natfleet.models import HostResult
from natfleet.output import add_format_option, safe, write_json, write_lines, write_records

EXAMPLES = """examples:
  natfleet summary                           every NAT instance found in AWS
  natfleet summary --host nat-a --host nat-b --details
  sudo natfleet summary --local --format json
columns: fill_pct is nf_conntrack_count/nf_conntrack_max; tcp_snat_est is comparable to a NAT
gateway's ActiveConnectionCount; drops are conntrack insert_failed/drop/early_drop; port_pressure
is the most translated ports toward one (destination, port, protocol) from one NAT address,
against ip_local_port_range (the NAT-instance form of a gateway's 55,000 limit).
exit codes: 0 every box answered, 1 error, 2 usage, 3 some boxes failed (rows say why)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "summary",
        help="per box: table fill, states, NAT kinds, drops, port pressure, top talkers",
        description="One streaming pass over each box's conntrack table (memory does not "
        "grow with the table): one row per box and a fleet total.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_format_option(parser)
    parser.add_argument(
        "--top", type=positive(int), default=10, help="how many top talkers (default 10)"
    )
    parser.add_argument(
        "--jobs",
        type=positive(int),
        metavar="N",
        help="processes the agent may use on a box for a big table (default: one per core, "
        "up to 4, only above 50,000 flows; workers run at nice 10); 1 keeps it to one core",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="also list top sources, destinations and port pressure per box "
        "(the default with a single box)",
    )
    add_target_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = run_from_args(args, api.summary_request(args.top, args.jobs))
    out = sys.stdout
    if args.format == "json":
        write_json(out, summary_json(results))
    else:
        records = [summary_record(r) for r in results]
        if len(results) > 1:
            records.append(fleet_total(results))
        write_records(out, args.format, records, SUMMARY_COLUMNS)
        if args.format == "table" and (args.details or len(results) == 1):
            for result in results:
                if isinstance(result, HostResult):
                    write_details(out, result)
    report_problems(results, out if args.format == "table" else None)
    return exit_code(results)


def write_details(out: TextIO, result: HostResult) -> None:
    """Top sources, destinations and port pressure of one box, and its counters: plain
    sentences and tables, every value through the output layer."""
    answer = result.answer
    facts, s = answer.facts, answer.summary
    if s is None:
        return
    line = f"{result.target.label}: {s.flows} flows"
    if facts.max:
        line += f" in a table of {facts.max} ({s.fill_pct}% full)"
    write_lines(out, ["", safe(f"{line}, read from {facts.source}")])
    lines = []
    if facts.stats:
        keys = ("insert_failed", "drop", "early_drop", "invalid", "search_restart")
        shown = ", ".join(f"{k} {facts.stats[k]}" for k in keys if k in facts.stats)
        lines.append(f"  counters: {shown}")
    for iface, counters in facts.ena.items():
        lines.append(f"  ENA {iface}: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    if facts.port_range:
        low, high = facts.port_range
        lines.append(f"  SNAT port range {low}-{high} ({high - low + 1} ports)")
    write_lines(out, [safe(text) for text in lines])
    records = [{"top": "source", "address": a, "flows": n} for a, n in s.top_sources]
    records += [{"top": "destination", "address": a, "flows": n} for a, n in s.top_destinations]
    if records:
        write_records(out, "table", records, ("top", "address", "flows"))
    if s.port_pressure:
        out.write("\n")
        pressure = [vars(p) for p in s.port_pressure]
        write_records(out, "table", pressure, ("nat_ip", "dst", "dport", "proto", "ports", "pct"))
    if s.top_error:
        out.write(
            f"  (top counts are approximate: more distinct addresses than the agent keeps; "
            f"each may be under by up to {s.top_error})\n"
        )
