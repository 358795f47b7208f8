"""``natfleet check``: a NAT health audit, findings with evidence and advice, an exit code.

Example:
    $ natfleet check                              every NAT instance and gateway found in AWS
    $ natfleet check --host nat-a --interval 60 --fail-on warning
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Mapping
from typing import Any, Optional, TextIO

from natfleet import api
from natfleet.check.findings import CATALOGUE, SEVERITIES
from natfleet.check.report import FAIL_ON, CheckReport, advice_lines
from natfleet.commands.argtypes import positive
from natfleet.commands.awsopts import config_from_args, sessions_from_args
from natfleet.commands.gateways import add_time_options
from natfleet.commands.report import report_problems
from natfleet.commands.targetopts import (
    _named,
    add_target_options,
    box_progress,
    read_options_from_args,
    resolve_targets_from_args,
    transport_from_args,
)
from natfleet.config import METHODS, Config
from natfleet.errors import NatfleetError, UsageError
from natfleet.models import Device, HostError, Target
from natfleet.output import (
    Column,
    add_output_options,
    safe,
    status_line,
    terminal_width,
    warn,
    write_lines,
    write_output,
)

EXAMPLES = """\
examples:
  natfleet check                          every NAT instance (and NAT gateway) found in AWS
  natfleet check --host nat-a --host nat-b --interval 60
  natfleet check --fail-on warning --format json | jq '.rows[] | select(.id == "port-pressure")'
  {root} check --local
what it checks, per box (the agent reads only: /proc, /sys, iptables-save -t nat,
ip6tables-save -t nat, nft list ruleset, ethtool -S):
  forwarding and NAT rules  ip_forward (IPv6 too where NAT66 rules exist), a MASQUERADE/SNAT
                            rule for the default route's interface, rules naming interfaces
                            that do not exist, strict rp_filter
  conntrack capacity        fill over 80%% / 95%%, insert_failed/drop/early_drop (per minute
                            with --interval), nf_conntrack_max vs memory and buckets, acct off
  ports                     port pressure over 50%% / 90%%, a small ip_local_port_range, SNAT
                            without --random-fully where collisions are likely
  timeouts                  the established timeout vs a NAT gateway's 350 s, idle flows
  ENA                       *_allowance_exceeded, conntrack_allowance_available low
and with AWS discovery: source/dest check on, default routes to stopped, missing or
blackholed targets, tagged instances no route uses, and per NAT gateway (CloudWatch over
--since): traffic in a VPC routed to NAT instances, ErrorPortAllocation, PacketsDropCount,
peak connections vs 55,000 per address. Thresholds: the [check] section of the config.
Every finding id, its usual severity and advice: natfleet check --list.
exit codes: 0 no finding reaches --fail-on; 4 one does (every box answered); 1 error or
every box failed; 2 usage; 3 some boxes failed (their rows say why; it wins over 4)
"""

COLUMNS = (
    Column("box", "BOX", short="box_shown"),
    Column("name", "NAME", table=False),
    Column("instance_id", "INSTANCE", table=False),
    Column("subject", "SUBJECT", wide=True),
    Column("severity", "SEVERITY"),
    Column("id", "FINDING"),
    Column("message", "DETAIL", shrink=True),
    Column("evidence", "EVIDENCE", wide=True, table=False),
    Column("advice", "ADVICE", wide=True, shrink=True),
)
LIST_COLUMNS = (
    Column("id", "FINDING"),
    Column("severity", "SEVERITY"),
    Column("where", "FROM"),
    Column("title", "WHAT", shrink=True),
    Column("advice", "ADVICE", wide=True, table=False),
)


def register(sub: argparse._SubParsersAction) -> None:
    from natfleet.invocation import root_command

    parser = sub.add_parser(
        "check",
        help="NAT health audit: findings with evidence and advice, and an exit code for "
        "cron and CI",
        description="Reads every box once (a summary walk plus read-only check facts) and, "
        "with AWS discovery, the EC2 side and NAT gateway metrics; prints one row per "
        "finding (critical, warning, info), worst first, grouped by box, then what to do.",
        epilog=EXAMPLES.format(root=root_command()).replace("%%", "%"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output_options(parser)
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="critical",
        help="exit 4 when a finding is at least this bad (default critical; never: exit 0 "
        "whatever is found)",
    )
    parser.add_argument(
        "--interval",
        type=positive(float),
        metavar="SECONDS",
        help="read the counters twice, SECONDS apart: drops and ENA allowances that grew "
        "in between are critical, with a per-minute rate",
    )
    parser.add_argument(
        "--list", action="store_true", help="list every finding id with its advice, read nothing"
    )
    add_time_options(parser)
    add_target_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.list:
        write_catalogue(out, args.format, args.wide)
        return 0
    config = config_from_args(args)
    devices: list[Device] = []
    rows: list[dict[str, Any]] = []
    methods: tuple[str, ...] = METHODS
    if _named(args):
        targets, errors = resolve_targets_from_args(args)
    else:
        devices, methods = discover_for_check(args, config)
        targets, errors = aws_targets(devices, args, config)
        rows = gateway_rows(args, devices)
    if not targets and not errors and not devices:
        raise NatfleetError(
            "nothing to check: no NAT instance or NAT gateway found; name boxes with "
            "--host, --hosts-file, --local or --input"
        )
    if any(t.kind == "snapshot" for t in targets):
        raise UsageError(
            "check reads live boxes: a snapshot has no check facts (forwarding, NAT rules, "
            "timeouts); check the boxes themselves, or --input a saved conntrack table"
        )
    executor, targets, errors = transport_from_args(args, config, targets, errors, devices)
    progress = box_progress(sys.stderr)
    try:
        report = api.check(
            targets,
            executor,
            read_options_from_args(args, config),
            config=config,
            interval=args.interval,
            devices=devices,
            gateway_rows=rows,
            methods=methods,
            errors=errors,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.clear()
    write_report(out, args.format, report, wide=args.wide)
    report_problems(report.results, out if args.format == "table" else None, out=out)
    return int(report.exit_code(args.fail_on))


# --- AWS ---------------------------------------------------------------------------------


def discover_for_check(args: argparse.Namespace, config: Config) -> tuple[list[Device], tuple]:
    """Every device, found with all three methods (the route and source/dest facts need
    them), gateways included; and the methods that make an instance a target."""
    disc = config.discovery
    tags = getattr(args, "tag", None)
    chosen = ("tag",) if tags else tuple(disc.methods)
    with status_line(sys.stderr) as show:
        if show:
            show("finding NAT instances and gateways in AWS")
        devices = api.discover(
            sessions_from_args(args),
            args.region,
            tags=tags or disc.tags,
            methods=METHODS,
            vpc_ids=args.vpc_id or (),
            instance_ids=args.instance_id or (),
            gateways=True,
        )
    return devices, chosen


def is_target(device: Device, methods: tuple) -> bool:
    """A live instance found by one of ``methods`` (a stopped one is a finding, not a box)."""
    if device.kind != "instance" or device.state in ("stopped", "stopping"):
        return False
    prefixes = tuple("route:" if m == "route" else f"{m}:" for m in methods)
    return any(reason.startswith(prefixes) for reason in device.found_by)


def aws_targets(
    devices: list[Device], args: argparse.Namespace, config: Config
) -> tuple[list[Target], list[HostError]]:
    methods = ("tag",) if getattr(args, "tag", None) else tuple(config.discovery.methods)
    chosen = [d for d in devices if is_target(d, methods)]
    return api.instance_targets(chosen, args.address or config.discovery.address)


def gateway_rows(args: argparse.Namespace, devices: list[Device]) -> list[dict[str, Any]]:
    gateways = [d for d in devices if d.kind == "gateway"]
    if not gateways:
        return []
    window = api.time_window(args.since, args.until, args.period)
    return api.gateway_metrics(sessions_from_args(args), gateways, window)


# --- output ------------------------------------------------------------------------------


def finding_records(report: CheckReport) -> list[dict[str, Any]]:
    """Table and CSV records: one per finding; in the table a box is named on its first row
    only, and a box without findings gets one ``ok`` row."""
    records: list[dict[str, Any]] = []
    for row in report.records():
        target = row["target"]
        first = not records or records[-1]["box"] != target["label"]
        records.append(
            {
                "box": target["label"],
                "box_shown": target["short_label"] if first else "",
                "name": target["name"],
                "instance_id": target["instance_id"],
                **{k: v for k, v in row.items() if k != "target"},
            }
        )
    return records


def ok_records(report: CheckReport) -> list[dict[str, Any]]:
    return [
        {
            "box": s.target.label,
            "box_shown": s.target.short_label,
            "subject": s.kind,
            "severity": "ok",
            "id": "-",
            "message": "no finding",
        }
        for s in report.subjects
        if not s.findings
    ]


def write_report(out: TextIO, fmt: str, report: CheckReport, wide: bool = False) -> None:
    """Table: the findings worst first, grouped by box, then what to do per finding id;
    JSON: the envelope (rows: every finding with its target, id, severity, message,
    evidence, advice; meta ``subjects`` and ``interval``); jsonl: a finding a line; CSV:
    one row per finding, evidence as ``key=value;...``."""
    errors = report.error_records()
    if fmt in ("json", "jsonl"):
        meta = {"subjects": report.boxes(), "interval": report.interval}
        write_output(
            out, fmt, "check", [], COLUMNS, meta=meta, errors=errors, rows=report.records()
        )
        return
    records = finding_records(report)
    if fmt == "table":
        records += ok_records(report)
    write_output(out, fmt, "check", records, COLUMNS, wide=wide, errors=errors)
    if fmt == "table":
        write_lines(out, advice_text(report, terminal_width(out)))


def advice_text(report: CheckReport, width: Optional[int]) -> list[str]:
    """``what to do:`` and one wrapped paragraph per finding id shown, escaped."""
    pairs = advice_lines(report)
    if not pairs:
        return []
    limit = max(60, min(width or 100, 120))
    lines = ["", "what to do:"]
    for finding_id, advice in pairs:
        lines += textwrap.wrap(
            f"{finding_id}: {advice}", limit, initial_indent="  ", subsequent_indent="      "
        )
    return [safe(line) for line in lines]


def catalogue_records() -> list[Mapping[str, Any]]:
    return [
        {"id": k, "severity": v.severity, "where": v.where, "title": v.title, "advice": v.advice}
        for k, v in CATALOGUE.items()
    ]


def write_catalogue(out: TextIO, fmt: str, wide: bool = False) -> None:
    """``--list``: every finding id, its usual severity, where its facts come from, what it
    means (and its advice: --wide, JSON, CSV)."""
    records = sorted(catalogue_records(), key=lambda r: (SEVERITIES.index(r["severity"]), r["id"]))
    write_output(out, fmt, "check", records, LIST_COLUMNS, wide=wide)
    if fmt == "table" and not wide:
        warn("advice per finding: natfleet check --list --wide (or --format json)")
