"""``natfleet discover``: the NAT instances and NAT gateways found in AWS, and how.

Example:
    $ natfleet discover
    KIND      ID                     NAME         VPC                    PRIVATE IP     STATE ...
    instance  i-7673c17c4d91bcb80    nflab-box1   vpc-9aafedd3fa96ae9ea  198.19.255.11  running
    $ natfleet discover --region eu-west-1 --format json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TextIO

from natfleet.commands.awsopts import add_aws_options, devices_from_args
from natfleet.errors import ExitCode
from natfleet.models import Device
from natfleet.output import Column, add_output_options, warn, write_output

EXAMPLES = """\
examples:
  natfleet discover
  natfleet discover -o wide
  natfleet discover --profile prod --region all --format json
  natfleet discover --tag Role=nat --vpc-id vpc-0123456789abcdef0
  natfleet discover --region us-east-1 --format csv > nat.csv
  natfleet discover --format jsonl | jq -r 'select(.kind == "instance") | .private_ip'
FOUND BY: tag (a --tag rule matched), route (a default route targets it; "2 routes": two),
src/dst off (source/destination check disabled), nat-gateway. BLACKHOLE: how many default
routes to it are blackholes (a 'missing' row: the target is gone; its route table with -o
wide). -o wide adds region, subnet, public IP, type, route tables and profile; JSON has every
reason in full (found_by, route_tables, blackhole_routes, addresses, tags).
"""


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
    add_output_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = devices_from_args(args)
    if not devices:
        warn("no NAT instances or NAT gateways found")
    write_devices(sys.stdout, args.format, devices, wide=args.wide)
    return ExitCode.OK


def found_by_text(found_by: Sequence[str]) -> Optional[str]:
    """How a device was found, in a few words: ``tag``, ``route`` (``2 routes``), ``src/dst
    off``, ``nat-gateway``; the full reasons are in JSON.

    Example:
        >>> found_by_text(["tag:Role=nat", "source-dest-check:off", "route:rtb-1 0.0.0.0/0",
        ...                "route:rtb-2 ::/0 via eni-3"])
        'tag, src/dst off, 2 routes'
    """
    words: list[str] = []
    routes = sum(reason.startswith("route:") for reason in found_by)
    for reason in found_by:
        if reason.startswith("tag:"):
            word = "tag"
        elif reason.startswith("source-dest-check:"):
            word = "src/dst off"
        elif reason.startswith("route:"):
            word = "route" if routes == 1 else f"{routes} routes"
        else:
            word = reason
        if word not in words:
            words.append(word)
    return ", ".join(words) or None


def device_record(device: Device) -> dict[str, Any]:
    """A device as one flat record of plain values (CSV): how it was found split into
    ``found_by_tag`` (the tag rules matched), ``found_by_routes`` (default routes to it) and
    ``found_by_source_dest_check``; ``blackholes`` counts its blackhole routes. The lists
    themselves stay in JSON (:func:`device_json`).

    Example:
        >>> r = device_record(Device("instance", "i-1", "us-east-1", found_by=["tag:Role=nat",
        ...                          "route:rtb-1 0.0.0.0/0"]))
        >>> r["found_by_tag"], r["found_by_routes"], r["found_by_source_dest_check"]
        ('Role=nat', 1, False)
    """
    record = device_json(device)
    found = device.found_by
    tags = [reason[len("tag:") :] for reason in found if reason.startswith("tag:")]
    record.update(
        found_by_tag=" ".join(tags) or None,
        found_by_routes=sum(reason.startswith("route:") for reason in found),
        found_by_source_dest_check=any(r.startswith("source-dest-check:") for r in found),
        blackholes=len(device.blackhole_routes),
    )
    return record


def device_json(device: Device) -> dict[str, Any]:
    """Every :class:`Device` field, as JSON shows it."""
    return dataclasses.asdict(device)


def _joined(key: str) -> Any:
    def cell(record: Mapping[str, Any]) -> Optional[str]:
        return ", ".join(record.get(key) or ()) or None

    return cell


COLUMNS = (
    Column("kind", "KIND"),
    Column("id", "ID"),
    Column("name", "NAME", shrink=True),
    Column("region", "REGION", wide=True),
    Column("vpc_id", "VPC"),
    Column("subnet_id", "SUBNET", wide=True),
    Column("private_ip", "PRIVATE IP"),
    Column("public_ip", "PUBLIC IP", wide=True),
    Column("instance_type", "TYPE", wide=True),
    Column("state", "STATE"),
    Column(
        "found", "FOUND BY", shrink=True, csv=False, cell=lambda r: found_by_text(r["found_by"])
    ),
    Column("route_table_ids", "ROUTE TABLES", wide=True, csv=False, cell=_joined("route_tables")),
    Column("blackholes", "BLACKHOLE", kind="int", cell=lambda r: r["blackholes"] or None),
    Column("profile", "PROFILE", wide=True),
    Column("found_by_tag", "TAG", table=False),
    Column("found_by_routes", "ROUTES", table=False),
    Column("found_by_source_dest_check", "SRC/DST OFF", table=False),
)


def write_devices(out: TextIO, fmt: str, devices: Sequence[Device], wide: bool = False) -> None:
    """Table and CSV: :data:`COLUMNS` (CSV one plain value a cell); JSON and jsonl: every
    Device field (lists in full). Every value is escaped by the output layer."""
    records = [device_record(d) for d in devices]
    rows = [device_json(d) for d in devices] if fmt in ("json", "jsonl") else None
    write_output(out, fmt, "discover", records, COLUMNS, wide=wide, rows=rows)
