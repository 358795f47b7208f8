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
    count_lines,
    fleet_total,
    summary_json,
    summary_record,
)
from natfleet.commands.argtypes import positive
from natfleet.commands.report import exit_code, report_problems
from natfleet.commands.targetopts import add_target_options, run_from_args
from natfleet.invocation import root_command
from natfleet.models import HostResult
from natfleet.output import Column, add_output_options, safe, write_lines, write_output

EXAMPLES = """examples:
  natfleet summary                           every NAT instance found in AWS
  natfleet summary --host nat-a --host nat-b --details
  {root} summary --local --format json
columns: FILL is nf_conntrack_count/nf_conntrack_max; TCP EST (tcp_snat_est) is comparable to a
NAT gateway's ActiveConnectionCount; DROPS is conntrack insert_failed + drop + early_drop (each
its own column with --wide and in CSV); PORT PRESSURE is the most translated ports toward one
(destination, port, protocol) from one NAT address, against ip_local_port_range (the
NAT-instance form of a gateway's 55,000 limit). --wide adds MAX, LOCAL, ROUTED, STATES, the
drop counters, TOP DESTINATION and MALFORMED.
exit codes: 0 every box answered, 1 error, 2 usage, 3 some boxes failed (rows say why)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "summary",
        help="per box: table fill, states, NAT kinds, drops, port pressure, top talkers",
        description="One streaming pass over each box's conntrack table (memory does not "
        "grow with the table): one row per box and a fleet total.",
        epilog=EXAMPLES.format(root=root_command()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output_options(parser)
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
    out, fmt = sys.stdout, args.format
    if fmt in ("json", "jsonl"):
        data = summary_json(results)
        meta = {"total": data["total"]}
        rows, errors = data["rows"], data["errors"]
        write_output(out, fmt, "summary", [], SUMMARY_COLUMNS, meta=meta, errors=errors, rows=rows)
    else:
        records = [summary_record(r) for r in results]
        total = fleet_total(results)
        if len(results) > 1 and total is not None:
            records.append(total)
        counts = count_lines(results)
        write_output(out, fmt, "summary", records, SUMMARY_COLUMNS, wide=args.wide, counts=counts)
        if fmt == "table" and (args.details or len(results) == 1):
            for result in results:
                if isinstance(result, HostResult):
                    write_details(out, result)
    report_problems(results, out if args.format == "table" else None, out=out)
    return exit_code(results)


TOP_COLUMNS = (
    Column("top", "TOP"),
    Column("address", "ADDRESS"),
    Column("flows", "FLOWS", kind="int"),
)
PRESSURE_COLUMNS = (
    Column("nat_ip", "NAT IP"),
    Column("dst", "DESTINATION"),
    Column("dport", "PORT", kind="int"),
    Column("proto", "PROTO"),
    Column("ports", "PORTS", kind="int"),
    Column("pct", "PRESSURE", kind="pct"),
)


def write_details(out: TextIO, result: HostResult) -> None:
    """Top sources, destinations and port pressure of one box, and its counters: plain
    sentences and tables, every value through the output layer."""
    answer = result.answer
    facts, s = answer.facts, answer.summary
    if s is None:
        return
    line = f"{result.target.label}: {s.flows:,} flows"
    if facts.max:
        fill = "?" if s.fill_pct is None else f"{s.fill_pct:.2f}%"
        line += f" in a table of {facts.max:,} ({fill} full)"
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
    if answer.cpu is not None:  # what reading the table cost the box
        lines.append(
            f"  agent: {answer.seconds:.2f} s, {answer.cpu:.2f} s of CPU (its workers included)"
        )
    write_lines(out, [safe(text) for text in lines])
    records = [{"top": "source", "address": a, "flows": n} for a, n in s.top_sources]
    records += [{"top": "destination", "address": a, "flows": n} for a, n in s.top_destinations]
    if records:
        write_output(out, "table", "summary", records, TOP_COLUMNS)
    if s.port_pressure:
        out.write("\n")
        pressure = [vars(p) for p in s.port_pressure]
        write_output(out, "table", "summary", pressure, PRESSURE_COLUMNS)
    if s.top_error:
        out.write(
            f"  (top counts are approximate: more distinct addresses than the agent keeps; "
            f"each may be under by up to {s.top_error})\n"
        )
