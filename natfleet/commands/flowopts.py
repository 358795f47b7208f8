"""netstat-nat's flags, shared by ``local`` and ``conns``, and the agent request they make.

Example:
    $ natfleet local -n -p tcp -S -r dst-port
    $ natfleet conns -n -d 203.0.113.5 -N --format json
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from typing import Any

from natfleet.agent import SORT_KEYS, AgentError, Request
from natfleet.commands.argtypes import positive, protocol
from natfleet.errors import UsageError
from natfleet.output import add_output_options
from natfleet.render import FORMATS, NetstatStyle

NETSTAT_EPILOG = """netstat-nat flags keep their letters and meanings, done right: numeric sorting,
full protocol names, exact TCP/SCTP states, IPv6 in full, -S -D together means both, DNAT's
NAT host shows the original destination port, port-only NAT (REDIRECT) counts as NAT."""


def add_flow_options(parser: argparse.ArgumentParser) -> None:
    """-n -p -s -d -S -D -L -R -x -r -o -N, --format (netstat text by default) and --wide
    (full target labels, every table column), --limit."""
    g = parser.add_argument_group("netstat-nat flags")
    g.add_argument("-n", dest="numeric", action="store_true", help="no name lookups")
    g.add_argument(
        "-p",
        dest="proto",
        metavar="PROTO",
        type=protocol,
        help="protocol: tcp, udp, icmp, ... or N",
    )
    g.add_argument(
        "-s", dest="src", metavar="HOST", action="append", help="source host, address or CIDR"
    )
    g.add_argument(
        "-d",
        dest="dst",
        metavar="HOST",
        action="append",
        help="destination host, address or CIDR (also matches a DNAT's public address)",
    )
    g.add_argument("-S", dest="snat", action="store_true", help="source-NAT connections only")
    g.add_argument("-D", dest="dnat", action="store_true", help="destination-NAT connections only")
    g.add_argument(
        "-L", dest="to_box", action="store_true", help="only connections to the NAT box itself"
    )
    g.add_argument(
        "-R", dest="routed", action="store_true", help="only connections routed without NAT"
    )
    g.add_argument("-x", dest="wide_addresses", action="store_true", help="wide address columns")
    g.add_argument(
        "-r",
        dest="sort",
        metavar="KEY",
        type=_sort_key,
        help="sort by src, dst, src-port, dst-port or state (numeric order)",
    )
    g.add_argument("-o", dest="no_header", action="store_true", help="no header line")
    g.add_argument("-N", dest="nat_host", action="store_true", help="show the NAT-host column")
    add_output_options(parser, FORMATS, default="netstat", short_o=False)
    parser.add_argument(
        "--limit", type=positive(int), metavar="N", help="print at most N rows (after sorting)"
    )


def _sort_key(value: str) -> str:
    if value not in SORT_KEYS:
        raise argparse.ArgumentTypeError(f"-r takes {', '.join(SORT_KEYS)}, not {value!r}")
    return value


def nat_kinds(args: argparse.Namespace) -> list[str]:
    """-S/-D/-L/-R as NAT kinds; together they add up (netstat-nat showed nothing for -S -D)."""
    kinds: list[str] = []
    if args.snat:
        kinds += ["snat", "snat+dnat"]
    if args.dnat:
        kinds += ["dnat"] if "snat+dnat" in kinds else ["dnat", "snat+dnat"]
    if args.to_box:
        kinds.append("local")
    if args.routed:
        kinds.append("routed")
    return kinds or ["snat", "dnat", "snat+dnat"]


def host_networks(values: list[str] | None, flag: str) -> list[str]:
    """Addresses or CIDRs for -s/-d; a name is resolved here (every address it has)."""
    found: list[str] = []
    for value in values or ():
        try:
            found.append(str(ipaddress.ip_network(value, strict=False)))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(value, None)
        except (socket.gaierror, UnicodeError) as exc:
            message = f"{flag} {value!r}: not an address, CIDR or known host ({exc})"
            raise UsageError(message) from None
        found.extend(sorted({str(info[4][0]) for info in infos}))
    return found


def request_from_args(args: argparse.Namespace, mode: str = "list") -> dict[str, Any]:
    """The agent request (docs/json.md) for these flags, checked here (a bad ``-p`` is a
    usage error before any box is contacted)."""
    request = {
        "mode": mode,
        "filters": {
            "proto": args.proto,
            "src": host_networks(args.src, "-s"),
            "dst": host_networks(args.dst, "-d"),
            "nat": nat_kinds(args),
        },
        "sort": args.sort,
        "limit": args.limit,
        "resolve": not args.numeric,
    }
    try:
        Request(request)
    except AgentError as exc:
        raise UsageError(str(exc)) from None
    return request


def style_from_args(args: argparse.Namespace) -> NetstatStyle:
    untranslated = (args.to_box or args.routed) and not (args.snat or args.dnat)
    return NetstatStyle(
        nat_host=args.nat_host,
        wide=args.wide_addresses,
        header=not args.no_header,
        untranslated=bool(untranslated),
        service_names=not args.numeric,
    )
