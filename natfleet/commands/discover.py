"""``natfleet discover``: the NAT instances and NAT gateways found in AWS, and how.

Example:
    $ natfleet discover --region eu-west-1 --format json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from collections.abc import Sequence

from natfleet.commands.awsopts import add_aws_options, devices_from_args
from natfleet.errors import ExitCode
from natfleet.models import Device
from natfleet.render import json_text, table_text
from natfleet.text import printable

EXAMPLES = """\
examples:
  natfleet discover
  natfleet discover --profile prod --region all --format json
  natfleet discover --tag Role=nat --vpc-id vpc-0123456789abcdef0
  natfleet discover --region us-east-1 --format csv > nat.csv
"""

COLUMNS = (
    ("kind", "KIND"),
    ("id", "ID"),
    ("name", "NAME"),
    ("region", "REGION"),
    ("vpc_id", "VPC"),
    ("private_ip", "PRIVATE IP"),
    ("public_ip", "PUBLIC IP"),
    ("instance_type", "TYPE"),
    ("state", "STATE"),
    ("found_by", "FOUND BY"),
    ("blackhole_routes", "BLACKHOLE"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "discover",
        help="NAT instances and NAT gateways found in AWS, and how each was found",
        description="List the NAT instances (by tag, route table target, disabled source/dest "
        "check) and NAT gateways of the account, saying how each was found. A route to a "
        "target that no longer exists is listed as kind 'missing' (a blackhole).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_aws_options(parser, address=False)
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = devices_from_args(args)
    if not devices:
        print("natfleet: no NAT instances or NAT gateways found", file=sys.stderr)
    sys.stdout.write(FORMATTERS[args.format](devices))
    return ExitCode.OK


def as_json(devices: Sequence[Device]) -> str:
    """Every Device field, as a JSON list."""
    return json_text([dataclasses.asdict(d) for d in devices])


def as_csv(devices: Sequence[Device]) -> str:
    """The table's columns; lists joined with ``;``."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([key for key, _ in COLUMNS])
    for d in devices:
        writer.writerow([_plain(getattr(d, key), ";") for key, _ in COLUMNS])
    return out.getvalue()


def as_table(devices: Sequence[Device]) -> str:
    """A tabulate table; names are made safe to print (no control or bidi characters)."""
    rows = [
        [printable(_plain(getattr(d, key), "\n"), newlines=True) for key, _ in COLUMNS]
        for d in devices
    ]
    return table_text(rows, [h for _, h in COLUMNS])


def _plain(value: object, sep: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return sep.join(str(v) for v in value)
    return str(value)


FORMATTERS = {"table": as_table, "json": as_json, "csv": as_csv}
