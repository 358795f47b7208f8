"""``natfleet gateways``: NAT gateway CloudWatch metrics, one row per gateway.

Example:
    $ natfleet gateways --since 3h
    GATEWAY            PEAK CONN  ATTEMPTS/EST  OUT      IN       PORT ERR  DROPS (RATE)   ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional, TextIO

from natfleet.commands.awsopts import add_aws_options, devices_from_args, sessions_from_args
from natfleet.errors import ExitCode
from natfleet.output import (
    NO_DATA,
    add_format_option,
    human,
    sparkline,
    warn,
    write_json,
    write_records,
)

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
    add_format_option(parser)
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

    window = cloudwatch.Window.from_options(args.since, args.until, args.period)
    found = devices_from_args(args, instances=False, gateways=True)
    gateways = [
        d for d in cloudwatch.select_gateways(found, args.nat_gateway_id) if d.kind == "gateway"
    ]
    if not gateways:
        warn("no NAT gateways found")
    rows = cloudwatch.gateway_rows(sessions_from_args(args), gateways, window)
    write_gateways(sys.stdout, args.format, rows)
    return ExitCode.OK


def _pair(a: Optional[float], b: Optional[float]) -> str:
    return NO_DATA if a is None and b is None else f"{human(a)}/{human(b)}"


def _rate(rate: Optional[float]) -> str:
    return NO_DATA if rate is None else f"{rate * 100:.3f}%"


# (table heading, how a row becomes the cell)
TABLE_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("GATEWAY", lambda r: r["nat_gateway_id"]),
    ("NAME", lambda r: r["name"]),
    ("PEAK CONN", lambda r: human(r["peak_active_connections"])),
    ("ACTIVE CONNECTIONS", lambda r: sparkline(r["active_connections"])),
    ("ATTEMPTS/ESTAB", lambda r: _pair(r["connection_attempts"], r["connections_established"])),
    ("BYTES OUT/IN", lambda r: _pair(r["bytes_to_destination"], r["bytes_from_destination"])),
    ("PKTS OUT/IN", lambda r: _pair(r["packets_to_destination"], r["packets_from_destination"])),
    ("PORT ERR", lambda r: human(r["error_port_allocation"])),
    ("DROPS", lambda r: human(r["packets_dropped"])),
    ("DROP RATE", lambda r: _rate(r["drop_rate"])),
    ("IDLE TIMEOUTS", lambda r: human(r["idle_timeouts"])),
)


def table_record(row: dict[str, Any]) -> dict[str, str]:
    """A gateway row as table cells, keyed by heading ('no data' where CloudWatch had none).

    Example:
        >>> table_record(row)["DROP RATE"], table_record(row)["PORT ERR"]
        ('0.040%', 'no data')
    """
    return {heading: cell(row) for heading, cell in TABLE_COLUMNS}


def write_gateways(out: TextIO, fmt: str, rows: Sequence[dict[str, Any]]) -> None:
    """Table: one gateway a line, human numbers; JSON: raw numbers (null for no data) and
    ISO 8601 UTC times; CSV: the JSON keys without the series, empty cells for no data."""
    if fmt == "json":
        write_json(out, list(rows))
    elif fmt == "csv":
        from natfleet.cloudwatch import GATEWAY_ROW_KEYS

        keys = [k for k in GATEWAY_ROW_KEYS if k != "active_connections"]
        write_records(out, "csv", rows, keys)
    else:
        headings = [heading for heading, _ in TABLE_COLUMNS]
        write_records(out, fmt, [table_record(r) for r in rows], headings)
