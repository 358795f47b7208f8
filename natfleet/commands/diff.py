"""``natfleet diff A B``: what changed between two snapshots, box by box.

Example:
    $ natfleet diff monday.snap.gz tuesday.snap.gz
    HOST   FLOWS  FILL           NEW  GONE  CHANGED  NAT  DROPS  PORT PRESSURE
    nat-a  20>27  0.01%>0.01%    9    2     1        0    +0     ...
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from natfleet.diff import CHANGE_KINDS, BoxDiff, box_json, change_record, diff_snapshots
from natfleet.errors import ExitCode
from natfleet.output import Column, add_output_options, write_lines, write_output
from natfleet.snapshot import read_snapshot

EXAMPLES = """examples:
  natfleet diff monday.snap.gz tuesday.snap.gz
  natfleet diff a.snap.gz b.snap.gz --format json | jq '.rows[] | [.target.label, (.new | length)]'
  natfleet diff a.snap.gz b.snap.gz --format csv   one row per changed flow
A flow is its original tuple and zone: NEW is in B only, GONE in A only, CHANGED has another
state, NAT another NAT host. DROPS are the insert_failed, drop and early_drop deltas.
exit codes: 0 done, 1 a snapshot cannot be read (truncated, corrupt, missing), 2 usage
"""

BOX_COLUMNS = (
    Column("target", "HOST", short="short_label"),
    Column("flows", "FLOWS"),
    Column("fill", "FILL"),
    *(Column(kind, kind.upper(), kind="int") for kind in CHANGE_KINDS),
    Column("drops", "DROPS"),
    Column("pressure", "PORT PRESSURE", shrink=True),
    Column("note", "NOTE", shrink=True),
)
CHANGE_COLUMNS = (
    Column("target", "HOST", short="short_label"),
    Column("change", "CHANGE"),
    Column("proto", "PROTO"),
    Column("source", "SOURCE"),
    Column("nat_host", "NAT HOST"),
    Column("destination", "DESTINATION"),
    Column("state", "STATE", csv=False),
    Column("status", "STATUS", table=False),
    Column("old_status", "OLD STATUS", table=False),
    Column("old_nat_host", "OLD NAT HOST", table=False),
    Column("nat", "NAT", table=False),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "diff",
        help="compare two snapshots: flows new, gone and changed, per box",
        description="Per box: flows new, gone and changed state, NAT-host and port-pressure "
        "changes, counter deltas and the fill change between snapshot A and snapshot B.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", metavar="A", help="the earlier snapshot (natfleet snapshot -o)")
    parser.add_argument("b", metavar="B", help="the later snapshot")
    add_output_options(parser)
    parser.set_defaults(func=run)


def _arrow(a: Any, b: Any, fmt: str = "{}") -> Optional[str]:
    if a is None and b is None:
        return None
    shown = ["-" if v is None else fmt.format(v) for v in (a, b)]
    return shown[0] if shown[0] == shown[1] else f"{shown[0]}>{shown[1]}"


def box_record(diff: BoxDiff) -> dict[str, Any]:
    drops = [v for v in diff.counters.values() if v is not None]
    pressure = None
    if diff.pressure:
        p = max(diff.pressure, key=lambda x: max(x["ports_a"] or 0, x["ports_b"] or 0))
        pressure = (
            f"{p['nat_ip']}>{p['dst']}:{p['dport']} {_arrow(p['ports_a'], p['ports_b'])} ports"
        )
        if len(diff.pressure) > 1:
            pressure += f" (+{len(diff.pressure) - 1} more)"
    note = diff.error
    if not diff.in_a:
        note = "only in B" + (f"; {note}" if note else "")
    elif not diff.in_b:
        note = "only in A" + (f"; {note}" if note else "")
    record: dict[str, Any] = {
        "target": diff.target.label,
        "short_label": diff.target.short_label,
        "flows": _arrow(diff.flows_a, diff.flows_b),
        "fill": _arrow(diff.fill_a, diff.fill_b, "{:.2f}%"),
        "drops": f"+{sum(drops)}" if drops else None,
        "pressure": pressure,
        "note": note,
    }
    for kind in CHANGE_KINDS:
        record[kind] = diff.count(kind) if diff.in_a and diff.in_b and not diff.error else None
    return record


def run(args: argparse.Namespace) -> int:
    a, b = read_snapshot(args.a), read_snapshot(args.b)
    diffs = diff_snapshots(a, b)
    out, fmt = sys.stdout, args.format
    meta = {
        "a": {"path": a.path, "generated": a.generated},
        "b": {"path": b.path, "generated": b.generated},
    }
    if fmt == "json":
        write_output(
            out, fmt, "diff", [], BOX_COLUMNS, meta=meta, rows=[box_json(d) for d in diffs]
        )
        return ExitCode.OK
    changes = []
    for diff in diffs:
        for change in diff.changes:
            record = change_record(diff, change)
            old = record["old_status"]
            record["state"] = (
                f"{old} > {record['status']}"
                if old and old != record["status"]
                else record["status"]
            )
            if record["old_nat_host"]:
                record["state"] += f" (NAT was {record['old_nat_host']})"
            changes.append(record)
    if fmt in ("csv", "jsonl"):
        write_output(
            out, fmt, "diff", changes, CHANGE_COLUMNS, rows=changes if fmt == "jsonl" else None
        )
        return ExitCode.OK
    write_output(out, "table", "diff", [box_record(d) for d in diffs], BOX_COLUMNS, wide=args.wide)
    if changes:
        write_lines(out, [""])
        write_output(out, "table", "diff", changes, CHANGE_COLUMNS, wide=args.wide)
    return ExitCode.OK
