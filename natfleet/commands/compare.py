"""``natfleet compare``: NAT instances and NAT gateways side by side, in the same columns.

Example:
    $ natfleet compare --since 3h
    $ natfleet compare --since 1d --period 1h --format json --plot compare.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TextIO

from natfleet.aggregate import INCIDENT, error_record
from natfleet.commands.awsopts import config_from_args, devices_from_args, sessions_from_args
from natfleet.commands.gateways import add_time_options, metric, window_line
from natfleet.commands.report import exit_code, report_problems
from natfleet.commands.targetopts import add_target_options, run_from_args
from natfleet.config import Prices, load_prices
from natfleet.errors import ExitCode
from natfleet.models import HostError
from natfleet.output import (
    Column,
    add_output_options,
    format_cell,
    safe,
    status_line,
    terminal_width,
    warn,
    write_lines,
    write_output,
)

if TYPE_CHECKING:  # boto3 is imported only when AWS is really used
    from natfleet.compare import Comparison

EXAMPLES = """\
examples:
  natfleet compare                        last 3 hours: every NAT instance and NAT gateway found
  natfleet compare --since 1d --period 1h --plot compare.png
  natfleet compare -o wide
  natfleet compare --prices my-prices.toml --format json
columns (NAT instance | NAT gateway; JSON and CSV keys in brackets):
  CONNS NOW  TCP SNAT ESTABLISHED conntrack entries now (agent) | last ActiveConnectionCount
  PEAK       a CloudWatch agent's fck-nat ConnectionEstablishedCount | ActiveConnectionCount
  BYTES OUT  AWS/EC2 NetworkOut/In (the whole ENI) | BytesOutToDestination/InFromDestination
             (BYTES IN, PKTS OUT, PKTS IN with -o wide)
  DROPS      conntrack drop + early_drop since boot | PacketsDropCount in the window
  PORT ERR   conntrack insert_failed since boot | ErrorPortAllocation in the window
  FILL       nf_conntrack_count / nf_conntrack_max | n/a  [table_fill_pct]
  PORT USE   busiest (NAT address, destination) share of ip_local_port_range |
             <= peak ActiveConnectionCount / (55,000 x addresses): an upper bound
  PER MONTH  hourly price x 730 | 730 gateway-hours + GB processed (BytesInFromSource +
             BytesInFromDestination in the window, scaled to 30 days); transfer not included
  ENA EXC    (-o wide) ENA *_allowance_exceeded counters since boot | n/a
'-' means CloudWatch or the agent gave nothing (never 0); 'no price' means the instance type
is not in the price list. Prices are estimates: config/prices.toml (us-east-1) built in,
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
    add_output_options(parser)
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
    with status_line(sys.stderr) as show:
        report = compare.compare(sessions_from_args(args), devices, results, prices, window, show)
    if not report.rows:
        warn("no NAT instances or NAT gateways found")
    out = sys.stdout
    errors = [error_record(r) for r in results if isinstance(r, HostError)]
    write_comparison(out, args.format, report, wide=args.wide, errors=errors)
    if args.plot:
        compare.write_plot(args.plot, report.rows, report.metrics, window)
        warn(f"plot written to {args.plot}")
    report_problems(results, out if args.format == "table" else None, out=out)
    return exit_code(results) if results else ExitCode.OK


def write_comparison(
    out: TextIO,
    fmt: str,
    report: Comparison,
    wide: bool = False,
    errors: Sequence[Mapping[str, Any]] = (),
) -> None:
    """JSON: the envelope with ``window`` and ``prices``, the rows as
    :data:`natfleet.compare.ROW_KEYS` (``conntrack`` and ``ena`` as objects) and the
    instances that could not be read as ``errors``; jsonl: a row a line; CSV: one plain
    value a cell (the conntrack counters in columns of their own; the price footer on
    stderr); table: :func:`write_table`."""
    meta = {"window": report.window.to_json(), "prices": prices_json(report.prices)}
    records = [compare_record(r) for r in report.rows]
    if fmt in ("json", "jsonl"):
        rows = report.rows
        write_output(out, fmt, "compare", records, COLUMNS, meta=meta, errors=errors, rows=rows)
    elif fmt == "csv":
        write_output(out, "csv", "compare", records, COLUMNS)
        warn(prices_footer(report.prices))
    else:
        write_table(out, records, report.window, report.prices, wide)


def prices_from_args(args: argparse.Namespace, config: Any) -> Prices:
    """``--prices FILE``, else the config's ``[prices] file``, else the built-in list."""
    if args.prices:
        config = dataclasses.replace(config, prices_file=Path(args.prices).expanduser())
    return load_prices(config)


def prices_footer(prices: Prices) -> str:
    """The line saying where the costs come from.

    Example:
        >>> prices_footer(Prices())
        'PER MONTH: estimates (us-east-1, USD, on-demand, data transfer not included) from ...'
    """
    where = str(prices.path) if prices.path else "the built-in price list (config/prices.toml)"
    kind = "estimates" if prices.estimate else "prices"
    return (
        f"PER MONTH: {kind} ({prices.region}, {prices.currency}, on-demand, data transfer "
        f"not included) from {where}"
    )


def prices_json(prices: Prices) -> dict[str, Any]:
    from natfleet.compare import prices_json as as_json

    return as_json(prices)


def compare_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A compare row as a flat record: ``short_label`` (the Name, else the ID) for the
    compact table, the conntrack counters as ``conntrack_<counter>`` (the per-interface ENA
    counters stay in JSON; ``ena_exceeded`` is their sum).

    Example:
        >>> r = compare_record({"name": "", "id": "nat-1", "conntrack": {"drop": 1}})
        >>> r["short_label"], r["conntrack_drop"], "conntrack" in r
        ('nat-1', 1, False)
    """
    record = {k: v for k, v in row.items() if k not in ("conntrack", "ena")}
    record["short_label"] = row.get("name") or row.get("id")
    for key, value in (row.get("conntrack") or {}).items():
        record[f"conntrack_{key}"] = value
    return record


def _not_applicable(key: str) -> Any:
    """A cell: ``n/a`` where the column means nothing for the row's kind, else the value."""

    def cell(record: Mapping[str, Any]) -> Any:
        from natfleet.compare import NOT_APPLICABLE

        if key in NOT_APPLICABLE.get(record.get("kind", ""), ()):
            return "n/a"
        return record.get(key)

    return cell


def port_use_cell(record: Mapping[str, Any]) -> Optional[str]:
    """``0.01%``, or ``<=0.73%`` for a gateway's upper bound; None without data.

    Example:
        >>> port_use_cell({"port_pressure_pct": 0.727, "port_pressure_bound": True})
        '<=0.73%'
    """
    value = record.get("port_pressure_pct")
    if value is None:
        return None
    text = format_cell(value, "pct")
    return "<=" + text if record.get("port_pressure_bound") else text


def cost_cell(record: Mapping[str, Any]) -> Optional[str]:
    """``3.07 USD``, else the reason there is no cost (``no price``); None: no data.

    Example:
        >>> cost_cell({"monthly_cost": 71.73, "currency": "USD"}), cost_cell({"cost_note": ""})
        ('71.73 USD', None)
    """
    cost = record.get("monthly_cost")
    if cost is not None:
        return f"{cost:,.2f} {record.get('currency') or ''}".rstrip()
    return record.get("cost_note") or None


COLUMNS = (
    Column("label", "DEVICE", short="short_label", shrink=True),
    Column("kind", "KIND"),
    Column("id", "ID", table=False),  # in the table: the wide DEVICE, "Name (id)"
    Column("name", "NAME", table=False),
    Column("region", "REGION", wide=True),
    Column("type", "TYPE", wide=True),
    metric("conns_now", "CONNS NOW"),
    metric("conns_peak", "PEAK"),
    metric("bytes_out", "BYTES OUT", "bytes"),
    metric("bytes_in", "BYTES IN", "bytes", wide=True),
    metric("packets_out", "PKTS OUT", wide=True),
    metric("packets_in", "PKTS IN", wide=True),
    metric("drops", "DROPS"),
    metric("port_errors", "PORT ERR"),
    Column("counters", "COUNTERS", wide=True),
    metric("ena_exceeded", "ENA EXC", cell=_not_applicable("ena_exceeded"), wide=True),
    metric("table_fill_pct", "FILL", "pct", _not_applicable("table_fill_pct")),
    metric("port_pressure_pct", "PORT USE", "text", port_use_cell),
    Column("port_pressure_bound", "BOUND", table=False),
    metric("gb_month", "GB/MONTH", "num", _not_applicable("gb_month"), wide=True),
    metric("monthly_cost", "PER MONTH", "text", cost_cell),
    Column("currency", "CURRENCY", table=False),
    Column("cost_note", "COST NOTE", table=False),
    *(Column(f"conntrack_{key}", key.upper(), table=False) for key in INCIDENT),
    Column("error", "ERROR", shrink=True),
)


def write_table(
    out: TextIO,
    records: Sequence[Mapping[str, Any]],
    window: Any,
    prices: Prices,
    wide: bool = False,
) -> None:
    """The window, the table, and what the cells mean where the kinds differ."""
    if not records:
        return
    out.write(window_line(window) + "\n")
    write_output(out, "table", "compare", records, COLUMNS, wide=wide)
    notes = [
        "DROPS, PORT ERR: instances since boot (conntrack), gateways in the window; "
        "-: no data (never 0)"
    ]
    if any(r.get("port_pressure_bound") for r in records):
        notes.append(
            "PORT USE <=: a gateway's upper bound, peak connections / (55,000 x addresses)"
        )
    notes.append(prices_footer(prices))
    write_lines(out, wrapped([safe(n) for n in notes], terminal_width(out)))


def wrapped(lines: Sequence[str], width: Optional[int]) -> list[str]:
    """``lines`` wrapped at spaces to ``width`` columns (continuations indented by two);
    as they are when ``width`` is None (a pipe or a file).

    Example:
        >>> wrapped(["PER MONTH: estimates from the built-in price list"], 30)
        ['PER MONTH: estimates from the', '  built-in price list']
    """
    if not width:
        return list(lines)
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]
    return out
