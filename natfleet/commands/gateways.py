"""``natfleet gateways``: NAT gateway CloudWatch metrics, one row per gateway.

Example:
    $ natfleet gateways --since 3h
    GATEWAY            PEAK CONN  ATTEMPTS/EST  OUT      IN       PORT ERR  DROPS (RATE)   ...
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from typing import Any, Optional

from natfleet.commands.awsopts import add_aws_options, devices_from_args, sessions_from_args
from natfleet.errors import ExitCode
from natfleet.models import Device
from natfleet.render import NO_DATA, human, json_text, sparkline, table_text
from natfleet.text import printable

EXAMPLES = """\
examples:
  natfleet gateways
  natfleet gateways --since 2d --period 1h
  natfleet gateways --since 2024-05-01T08:00:00Z --until 2024-05-01T12:00:00Z --format json
  natfleet gateways --profile prod --region all --nat-gateway-id nat-0123456789abcdef0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateways",
        help="NAT gateway CloudWatch metrics: connections, errors, drops, bytes",
        description="One row per NAT gateway over a time window: peak ActiveConnectionCount "
        "(with a sparkline), connection attempts vs established, bytes and packets each way, "
        "ErrorPortAllocation, PacketsDropCount and drop rate, IdleTimeoutCount. 'no data' "
        "means CloudWatch has no points, which is not the same as 0.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_time_options(parser)
    add_aws_options(parser, address=False)
    parser.add_argument(
        "--nat-gateway-id", action="append", metavar="ID", help="only this gateway (repeatable)"
    )
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    parser.set_defaults(func=run)


def add_time_options(parser: argparse.ArgumentParser) -> None:
    """``--since --until --period`` (shared with ``compare``)."""
    parser.add_argument(
        "--since", default="3h", metavar="WHEN", help="start: 30m, 3h, 2d, 1w ago or ISO 8601 (3h)"
    )
    parser.add_argument("--until", metavar="WHEN", help="end: like --since (default: now)")
    parser.add_argument(
        "--period",
        metavar="SECONDS",
        help="seconds per point: 60, 5m, 1h (default: fits the window in 1440 points)",
    )


def run(args: argparse.Namespace) -> int:
    from natfleet import cloudwatch  # boto3 loads only when a command needs AWS

    start = cloudwatch.parse_since(args.since)
    end = cloudwatch.parse_time(args.until)
    period = cloudwatch.parse_period(args.period) or cloudwatch.choose_period(start, end)
    gateways = [
        d
        for d in devices_from_args(args, instances=False, gateways=True)
        if d.kind == "gateway" and (not args.nat_gateway_id or d.id in args.nat_gateway_id)
    ]
    if not gateways:
        print("natfleet: no NAT gateways found", file=sys.stderr)
    rows = gateway_rows(args, gateways, start, end, period)
    sys.stdout.write(FORMATTERS[args.format](rows))
    return ExitCode.OK


def gateway_rows(
    args: argparse.Namespace, gateways: Sequence[Device], start: Any, end: Any, period: int
) -> list[dict[str, Any]]:
    """:func:`natfleet.cloudwatch.gateway_summary` rows with name, region and window added."""
    from natfleet import cloudwatch

    sessions = sessions_from_args(args)
    rows = []
    for (profile, region), members in cloudwatch.by_profile_region(gateways).items():
        series = cloudwatch.gateway_metrics(
            sessions[profile], region, [g.id for g in members], start, end, period
        )
        by_id = {g.id: g for g in members}
        for row in cloudwatch.gateway_summary(series, start, end):
            gw = by_id[row["nat_gateway_id"]]
            rows.append(
                {
                    "name": gw.name,
                    "region": region,
                    "vpc_id": gw.vpc_id,
                    "start": start,
                    "end": end,
                    "period": period,
                    **row,
                }
            )
    return rows


def _pair(a: Optional[float], b: Optional[float]) -> str:
    return NO_DATA if a is None and b is None else f"{human(a)}/{human(b)}"


def _rate(rate: Optional[float]) -> str:
    return NO_DATA if rate is None else f"{rate * 100:.3f}%"


def as_table(rows: Sequence[dict[str, Any]]) -> str:
    """The human table, one gateway a row."""
    headers = [
        "GATEWAY",
        "NAME",
        "PEAK CONN",
        "ACTIVE CONNECTIONS",
        "ATTEMPTS/ESTAB",
        "BYTES OUT/IN",
        "PKTS OUT/IN",
        "PORT ERR",
        "DROPS",
        "DROP RATE",
        "IDLE TIMEOUTS",
    ]
    table = [
        [
            r["nat_gateway_id"],
            printable(r["name"]),
            human(r["peak_active_connections"]),
            sparkline(r["active_connections"]),
            _pair(r["connection_attempts"], r["connections_established"]),
            _pair(r["bytes_to_destination"], r["bytes_from_destination"]),
            _pair(r["packets_to_destination"], r["packets_from_destination"]),
            human(r["error_port_allocation"]),
            human(r["packets_dropped"]),
            _rate(r["drop_rate"]),
            human(r["idle_timeouts"]),
        ]
        for r in rows
    ]
    return table_text(table, headers)


def as_json(rows: Sequence[dict[str, Any]]) -> str:
    """Raw numbers (null for no data)."""
    return json_text(list(rows))


def as_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Raw numbers; empty cell for no data; the series left out."""
    out = io.StringIO()
    keys = [k for k in (rows[0] if rows else {}) if k != "active_connections"]
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


FORMATTERS = {"table": as_table, "json": as_json, "csv": as_csv}
