"""``natfleet summary``: per box, how full the table is and who is using it.

Example:
    $ natfleet summary                        # every NAT instance found in AWS
    $ sudo natfleet summary --local --details
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
from natfleet.render import write_json, write_records

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
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
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
    request = {"mode": "summary", "top": args.top}
    if args.jobs is not None:
        request["jobs"] = args.jobs
    results = run_from_args(args, request)
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


def write_details(out: Any, result: HostResult) -> None:
    """Top sources, destinations and port pressure of one box, and its counters."""
    answer, s = result.answer, result.summary
    out.write(f"\n{result.target.label}: {s.get('flows')} flows")
    if answer.get("max"):
        out.write(f" in a table of {answer['max']} ({s.get('fill_pct')}% full)")
    out.write(f", read from {answer.get('source')}\n")
    stats = answer.get("stats") or {}
    if stats:
        keys = ("insert_failed", "drop", "early_drop", "invalid", "search_restart")
        out.write("  counters: " + ", ".join(f"{k} {stats[k]}" for k in keys if k in stats))
        out.write("\n")
    for iface, counters in (answer.get("ena") or {}).items():
        out.write(f"  ENA {iface}: " + ", ".join(f"{k} {v}" for k, v in counters.items()) + "\n")
    if answer.get("port_range"):
        low, high = answer["port_range"]
        out.write(f"  SNAT port range {low}-{high} ({high - low + 1} ports)\n")
    rows = [["source", a, n] for a, n in s.get("top_sources", [])]
    rows += [["destination", a, n] for a, n in s.get("top_destinations", [])]
    records = [{"top": k, "address": a, "flows": n} for k, a, n in rows]
    if records:
        write_records(out, "table", records, ("top", "address", "flows"))
    pressure = s.get("port_pressure", [])
    if pressure:
        out.write("\n")
        write_records(out, "table", pressure, ("nat_ip", "dst", "dport", "proto", "ports", "pct"))
    if s.get("top_error"):
        out.write(
            f"  (top counts are approximate: more distinct addresses than the agent keeps; "
            f"each may be under by up to {s['top_error']})\n"
        )
