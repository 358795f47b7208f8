"""``natfleet compare``: NAT instances and NAT gateways side by side, in the same columns.

Example:
    $ natfleet compare --since 3h
    $ natfleet compare --since 1d --period 1h --format json --plot compare.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from natfleet.commands.awsopts import config_from_args, devices_from_args, sessions_from_args
from natfleet.commands.gateways import add_time_options
from natfleet.commands.report import exit_code, report_problems
from natfleet.commands.targetopts import add_target_options, run_from_args
from natfleet.config import Prices, load_prices
from natfleet.errors import ExitCode
from natfleet.output import NO_DATA, add_format_option, human, safe, warn, write_json, write_records

if TYPE_CHECKING:  # boto3 is imported only when AWS is really used
    from natfleet.compare import Comparison

EXAMPLES = """\
examples:
  natfleet compare                        last 3 hours: every NAT instance and NAT gateway found
  natfleet compare --since 1d --period 1h --plot compare.png
  natfleet compare --prices my-prices.toml --format json
columns (NAT instance | NAT gateway):
  conns_now    TCP SNAT ESTABLISHED conntrack entries now (agent) | last ActiveConnectionCount
  conns_peak   a CloudWatch agent's fck-nat ConnectionEstablishedCount | ActiveConnectionCount
  bytes, pkts  AWS/EC2 NetworkOut/In (the whole ENI) | BytesOutToDestination/InFromDestination
  drops        conntrack drop + early_drop since boot | PacketsDropCount in the window
  port_err     conntrack insert_failed since boot | ErrorPortAllocation in the window
  ena_exc      ENA *_allowance_exceeded counters since boot | n/a
  fill         nf_conntrack_count / nf_conntrack_max | n/a
  port_use     busiest (NAT address, destination) share of ip_local_port_range |
               <= peak ActiveConnectionCount / (55,000 x addresses): an upper bound
  per_month    hourly price x 730 | 730 gateway-hours + GB processed (BytesInFromSource +
               BytesInFromDestination in the window, scaled to 30 days); transfer not included
'no data' means CloudWatch or the agent gave nothing (never 0); 'no price' means the instance
type is not in the price list. Prices are estimates: config/prices.toml (us-east-1) built in,
[prices] file in the config or --prices FILE to override.
exit codes: 0 every instance answered, 1 error, 2 usage, 3 some instances failed (rows say why)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="NAT instances and NAT gateways side by side: connections, bytes, drops, "
        "headroom, estimated monthly cost",
        description="One row per NAT instance (CloudWatch AWS/EC2 over the window and the "
        "agent's conntrack summary now, read over SSH like 'summary') and per NAT gateway "
        "(CloudWatch AWS/NATGateway), in the same columns.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_time_options(parser)
    parser.add_argument(
        "--nat-gateway-id", action="append", metavar="ID", help="only this gateway (repeatable)"
    )
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="price list (TOML, like config/prices.toml; default: config [prices] file, "
        "else the built-in us-east-1 estimates)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the compared series over time into FILE.png "
        "(needs matplotlib: pip install 'natfleet[plot]')",
    )
    add_format_option(parser)
    add_target_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natfleet import cloudwatch, compare  # boto3 loads only when a command needs AWS

    if args.plot:
        compare.pyplot()  # no matplotlib: say so before any AWS or SSH work
    window = compare.Window.from_options(args.since, args.until, args.period)
    config = config_from_args(args)
    prices = prices_from_args(args, config)
    found = devices_from_args(args, config, gateways=True)
    devices = cloudwatch.select_gateways(found, args.nat_gateway_id)
    results = run_from_args(args, compare.AGENT_REQUEST, devices, allow_empty=True)
    report = compare.compare(sessions_from_args(args), devices, results, prices, window)
    if not report.rows:
        warn("no NAT instances or NAT gateways found")
    out = sys.stdout
    write_comparison(out, args.format, report)
    if args.plot:
        compare.write_plot(args.plot, report.rows, report.metrics, window)
        warn(f"plot written to {args.plot}")
    report_problems(results, out if args.format == "table" else None)
    return exit_code(results) if results else ExitCode.OK


def write_comparison(out: TextIO, fmt: str, report: Comparison) -> None:
    """JSON: ``{window, prices, rows}``; CSV: every row key (the price footer on stderr);
    table: :func:`write_table`."""
    from natfleet import compare

    if fmt == "json":
        write_json(out, report.to_json())
    elif fmt == "csv":
        write_records(out, "csv", report.rows, compare.ROW_KEYS)
        warn(prices_footer(report.prices))
    else:
        write_table(out, report.rows, report.window, report.prices)


def prices_from_args(args: argparse.Namespace, config: Any) -> Prices:
    """``--prices FILE``, else the config's ``[prices] file``, else the built-in list."""
    if args.prices:
        config = dataclasses.replace(config, prices_file=Path(args.prices).expanduser())
    return load_prices(config)


def prices_footer(prices: Prices) -> str:
    """The line saying where the costs come from.

    Example:
        >>> prices_footer(Prices())
        'per_month: estimates (us-east-1, USD, on-demand) from the built-in price list ...'
    """
    where = str(prices.path) if prices.path else "the built-in price list (config/prices.toml)"
    kind = "estimates" if prices.estimate else "prices"
    return (
        f"per_month: {kind} ({prices.region}, {prices.currency}, on-demand) from {where}; "
        "data transfer not included"
    )


def _pct(value: float) -> str:
    return f"{value:.2f}%"


def _bytes(value: float) -> str:
    return human(value, "B")


# (table column, row key, how a known value is shown)
TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("conns_now", "conns_now", human),
    ("conns_peak", "conns_peak", human),
    ("bytes_out", "bytes_out", _bytes),
    ("bytes_in", "bytes_in", _bytes),
    ("pkts_out", "packets_out", human),
    ("pkts_in", "packets_in", human),
    ("drops", "drops", human),
    ("port_err", "port_errors", human),
    ("ena_exc", "ena_exceeded", human),
    ("fill", "table_fill_pct", _pct),
    ("port_use", "port_pressure_pct", _pct),
)
HEADERS = ("device", "kind", "type", *(c for c, _, _ in TABLE_COLUMNS), "per_month", "note")


def table_record(row: dict[str, Any]) -> dict[str, str]:
    """A row as table cells: 'no data' for None, 'n/a' where the column means nothing for
    the kind, '<=' before an upper bound.

    Example:
        >>> table_record(gateway_row)["port_use"], table_record(gateway_row)["fill"]
        ('<=0.73%', 'n/a')
    """
    cells = {"device": row["label"], "kind": row["kind"], "type": row["type"] or "?"}
    from natfleet.compare import NOT_APPLICABLE

    for column, key, show in TABLE_COLUMNS:
        value = row.get(key)
        if key in NOT_APPLICABLE[row["kind"]]:
            cells[column] = "n/a"
        else:
            cells[column] = NO_DATA if value is None else show(value)
    if row["port_pressure_bound"] and row["port_pressure_pct"] is not None:
        cells["port_use"] = "<=" + cells["port_use"]
    cost = row["monthly_cost"]
    cells["per_month"] = f"{cost:,.2f} {row['currency']}" if cost is not None else row["cost_note"]
    cells["note"] = row["error"] or ""
    return cells


def write_table(out: TextIO, rows: Sequence[dict[str, Any]], window: Any, prices: Prices) -> None:
    """The window, the table, and what the cells mean where the kinds differ."""
    start, end = (t.strftime("%Y-%m-%d %H:%M:%S") for t in (window.start, window.end))
    out.write(f"window {start} to {end} UTC, {window.period} s points\n")
    write_records(out, "table", [table_record(r) for r in rows], HEADERS)
    out.write(
        "drops/port_err/ena_exc: instances since boot (conntrack, ENA), gateways in the window\n"
    )
    if any(r["port_pressure_bound"] for r in rows):
        out.write(
            "port_use <=: a gateway's upper bound, peak connections / (55,000 x addresses); "
            "CloudWatch has no per-destination count\n"
        )
    out.write(safe(prices_footer(prices)) + "\n")
