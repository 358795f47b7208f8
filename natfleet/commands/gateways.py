"""``natfleet gateways``: NAT gateway CloudWatch metrics, one row per gateway.

Example:
    $ natfleet gateways --since 3h
    window 2026-12-01T16:45:45Z to 2026-12-01T19:45:45Z, 60 s points
    GATEWAY                NAME         PEAK CONN  ACTIVE            BYTES OUT  BYTES IN  ...
    nat-d9d6e93a9d7a2dc57  nflab-natgw  720        ▁▄▆█▂▅▇█▃▆█▂▄▇█▃  24.7MB     101.0MB   ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

from natfleet.commands.awsopts import add_aws_options, devices_from_args, sessions_from_args
from natfleet.errors import ExitCode
from natfleet.output import (
    SPARKS,
    Column,
    add_output_options,
    format_cell,
    iso_time,
    sparkline,
    status_line,
    warn,
    write_output,
)

if TYPE_CHECKING:  # boto3 is imported only when AWS is really used
    from natfleet.cloudwatch import Window

EXAMPLES = """\
examples:
  natfleet gateways
  natfleet gateways --since 2d --period 1h -o wide
  natfleet gateways --since 2024-05-01T08:00:00Z --until 2024-05-01T12:00:00Z --format json
  natfleet gateways --profile prod --region all --nat-gateway-id nat-0123456789abcdef0
  natfleet gateways --format jsonl | jq -c 'select(.error_port_allocation > 0)'
columns: PEAK CONN is the highest ActiveConnectionCount, ACTIVE its sparkline; BYTES OUT/IN are
BytesOutToDestination/BytesInFromDestination, PORT ERR ErrorPortAllocation, DROPS
PacketsDropCount and DROP RATE its share of the packets in, all summed over the window. -o wide
adds region, VPC, attempts, established, packets, idle timeouts, rates and bytes processed.
'-' means CloudWatch has no points, which is not the same as 0.
"""
SPARK_COLUMNS = 16  # the ACTIVE sparkline's width in a table
ASCII_SPARKS = "_.-:=+*#"  # the sparkline on a stream that cannot write ▁▂▃▄▅▆▇█


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateways",
        help="NAT gateway CloudWatch metrics: connections, errors, drops, bytes",
        description="One row per NAT gateway over a time window: peak ActiveConnectionCount "
        "(with a sparkline), bytes each way, ErrorPortAllocation, PacketsDropCount and drop "
        "rate; with -o wide also connection attempts vs established, packets, "
        "IdleTimeoutCount and rates.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_time_options(parser)
    add_aws_options(parser, address=False)
    parser.add_argument(
        "--nat-gateway-id", action="append", metavar="ID", help="only this gateway (repeatable)"
    )
    add_output_options(parser)
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
    with status_line(sys.stderr) as show:
        rows = cloudwatch.gateway_rows(sessions_from_args(args), gateways, window, show)
    write_gateways(sys.stdout, args.format, rows, window, wide=args.wide)
    return ExitCode.OK


# --- output --------------------------------------------------------------------------------


def spark_cell(values: Sequence[float], out: TextIO, width: int = SPARK_COLUMNS) -> Optional[str]:
    """The sparkline of ``values`` (None without points), in ASCII (``_.-:=+*#``) when
    ``out``'s encoding cannot write the block characters.

    Example:
        >>> spark_cell([0, 1, 2, 3, 4, 5, 6, 7], io.TextIOWrapper(io.BytesIO(), "ascii"))
        '_.-:=+*#'
    """
    if not values:
        return None
    line = sparkline(values, width)
    if not can_encode(out, SPARKS):
        line = line.translate(str.maketrans(SPARKS, ASCII_SPARKS))
    return line


def can_encode(out: Any, text: str) -> bool:
    """Whether ``out`` (its ``encoding``, UTF-8 when it has none) can write ``text``."""
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def rate_cell(rate: Optional[float]) -> Optional[str]:
    """A drop rate (a fraction) as a table percentage; ``<0.01%`` for a rate too small
    for two decimals but not 0.

    Example:
        >>> rate_cell(0.0004), rate_cell(0.00004), rate_cell(0.0), rate_cell(None)
        ('0.04%', '<0.01%', '0.00%', None)
    """
    if rate is None:
        return None
    pct = rate * 100
    return "<0.01%" if 0 < pct < 0.005 else format_cell(pct, "pct")


NONE = "-"  # a metric's table cell when CloudWatch has no points (never 0)


def metric(
    key: str,
    header: str,
    kind: str = "int",
    cell: Optional[Callable[[Mapping[str, Any]], Any]] = None,
    **options: Any,
) -> Column:
    """A metric column: its cell is :data:`NONE` when there is no data, so the column
    stays in the table even when no row has data ("no data" is the answer, not a gap).

    Example:
        >>> metric("drops", "DROPS").text({"drops": None}), metric("drops", "DROPS").text({})
        ('-', '-')
    """
    get = cell or (lambda record: record.get(key))

    def shown(record: Mapping[str, Any]) -> Any:
        value = get(record)
        return NONE if value is None else value

    return Column(key, header, kind=kind, cell=shown, **options)


def per_second(key: str) -> Callable[[Mapping[str, Any]], Optional[str]]:
    """A cell of bytes per second: ``2.3KB/s``.

    Example:
        >>> per_second("out")({"out": 2345.0})
        '2.3KB/s'
    """

    def cell(record: Mapping[str, Any]) -> Optional[str]:
        value = record.get(key)
        return None if value is None else format_cell(value, "bytes") + "/s"

    return cell


def gateway_columns(out: TextIO) -> tuple[Column, ...]:
    """The columns of ``natfleet gateways`` (the sparkline as ``out`` can write it)."""

    def active(record: Mapping[str, Any]) -> Optional[str]:
        return spark_cell(record.get("active_connections") or [], out)

    return (
        Column("nat_gateway_id", "GATEWAY"),
        Column("name", "NAME", shrink=True),
        Column("region", "REGION", wide=True),
        Column("vpc_id", "VPC", wide=True),
        metric("peak_active_connections", "PEAK CONN"),
        metric("active_sparkline", "ACTIVE", "text", active, csv=False),
        metric("connection_attempts", "ATTEMPTS", wide=True),
        metric("connections_established", "ESTABLISHED", wide=True),
        metric("bytes_to_destination", "BYTES OUT", "bytes"),
        metric("bytes_from_destination", "BYTES IN", "bytes"),
        metric("packets_to_destination", "PKTS OUT", wide=True),
        metric("packets_from_destination", "PKTS IN", wide=True),
        metric("error_port_allocation", "PORT ERR"),
        metric("packets_dropped", "DROPS"),
        metric("drop_rate", "DROP RATE", "text", lambda r: rate_cell(r.get("drop_rate"))),
        metric("idle_timeouts", "IDLE TIMEOUTS", wide=True),
        metric(
            "bytes_per_second_out", "OUT/S", "text", per_second("bytes_per_second_out"), wide=True
        ),
        metric("bytes_per_second_in", "IN/S", "text", per_second("bytes_per_second_in"), wide=True),
        metric("bytes_processed", "PROCESSED", "bytes", wide=True),
        Column("start", "START", table=False),
        Column("end", "END", table=False),
        Column("period", "PERIOD", table=False),
        Column("seconds", "SECONDS", table=False),
    )


def gateway_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A :func:`natfleet.cloudwatch.gateway_rows` row with ISO 8601 UTC times.

    Example:
        >>> gateway_record({"start": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)})
        {'start': '2026-12-01T00:00:00Z'}
    """
    return {k: iso_time(v) if hasattr(v, "astimezone") else v for k, v in row.items()}


def window_line(window: Window) -> str:
    """The line above a table saying which window it covers.

    Example:
        >>> window_line(Window.from_options("2024-05-01T10:00Z", "2024-05-01T11:00Z", "60"))
        'window 2024-05-01T10:00:00Z to 2024-05-01T11:00:00Z, 60 s points'
    """
    return f"window {iso_time(window.start)} to {iso_time(window.end)}, {window.period} s points"


def write_gateways(
    out: TextIO,
    fmt: str,
    rows: Sequence[Mapping[str, Any]],
    window: Window,
    wide: bool = False,
) -> None:
    """Table: the window, then one gateway a line; CSV: every column but the sparkline (the
    series is JSON's ``active_connections``); JSON: the envelope with ``window``; jsonl: a
    gateway a line. Numbers are raw in CSV and JSON (null / empty for no data)."""
    records = [gateway_record(r) for r in rows]
    if fmt == "table" and records:
        out.write(window_line(window) + "\n")
    meta = {"window": window.to_json()}
    write_output(out, fmt, "gateways", records, gateway_columns(out), wide=wide, meta=meta)
