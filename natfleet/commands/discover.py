"""``natfleet discover``: the NAT instances and NAT gateways found in AWS, and how.

Example:
    $ natfleet discover --region eu-west-1 --format json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import TextIO

from natfleet.commands.awsopts import add_aws_options, devices_from_args
from natfleet.errors import ExitCode
from natfleet.models import Device
from natfleet.output import add_format_option, warn, write_json, write_records

EXAMPLES = """\
examples:
  natfleet discover
  natfleet discover --profile prod --region all --format json
  natfleet discover --tag Role=nat --vpc-id vpc-0123456789abcdef0
  natfleet discover --region us-east-1 --format csv > nat.csv
"""

# (Device field: the CSV column, table heading)
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
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = devices_from_args(args)
    if not devices:
        warn("no NAT instances or NAT gateways found")
    write_devices(sys.stdout, args.format, devices)
    return ExitCode.OK


def write_devices(out: TextIO, fmt: str, devices: Sequence[Device]) -> None:
    """JSON: every Device field; table and CSV: :data:`COLUMNS` (lists one item a line in
    the table, joined with ``;`` in CSV). Every value is escaped by the output layer."""
    if fmt == "json":
        write_json(out, [dataclasses.asdict(d) for d in devices])
        return
    records = [dataclasses.asdict(d) for d in devices]
    columns = [key for key, _ in COLUMNS]
    write_records(out, fmt, records, columns, headers=[h for _, h in COLUMNS])
