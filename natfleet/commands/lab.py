"""``natfleet lab up|down|status|env``: the local network-namespace lab (needs root).

Example:
    $ sudo natfleet lab up --boxes 3
    $ eval "$(sudo natfleet lab env)" && natfleet summary
    $ sudo natfleet lab down
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Sequence
from typing import TextIO

from natfleet import lab
from natfleet.errors import ExitCode
from natfleet.output import add_format_option, iso_time, safe, warn, write_json, write_records

# (box_status key, table heading)
STATUS_COLUMNS = (
    ("name", "BOX"),
    ("mgmt_ip", "MGMT"),
    ("netns", "NETNS"),
    ("sshd", "SSHD"),
    ("conntrack", "CONNTRACK"),
    ("instance_id", "INSTANCE"),
)


def _log(message: str) -> None:
    warn(message)


def _env_lines(state: lab.LabState) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in state.env().items()]


def cmd_up(args: argparse.Namespace) -> int:
    """Build the lab, then print the lines that point natfleet at it."""
    state = lab.up(boxes=args.boxes, aws=not args.no_aws, log=_log, lifetime=args.lifetime)
    _log(f"ssh: ssh -F {state.ssh_config} {state.boxes[0].name}")
    _log('to use it (or: eval "$(natfleet lab env)"):')
    print("\n".join(_env_lines(state)))
    return ExitCode.OK


def cmd_down(args: argparse.Namespace) -> int:
    """Remove every lab namespace, process and file."""
    lab.down(log=_log)
    return ExitCode.OK


def cmd_env(args: argparse.Namespace) -> int:
    """Print ``export VAR=value`` lines for a running lab."""
    print("\n".join(_env_lines(lab.load_state())))
    return ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    """One row per box: namespace, sshd, conntrack entries; 1 when something is down."""
    state = lab.load_state()
    rows = lab.box_status(state)
    ends = datetime.datetime.fromtimestamp(state.started + state.lifetime, datetime.timezone.utc)
    write_status(sys.stdout, args.format, rows, state, ends)
    healthy = all(row["netns"] and row["sshd"] for row in rows)
    return ExitCode.OK if healthy else ExitCode.ERROR


def status_record(row: dict[str, object]) -> dict[str, object]:
    """A box_status row as table cells: up/gone, up/down, ``-`` for unknown.

    Example:
        >>> status_record({"name": "nflab-box1", "mgmt_ip": "198.19.255.11", "netns": True,
        ...                "sshd": False, "conntrack": None, "instance_id": None})["sshd"]
        'down'
    """
    return {
        **row,
        "netns": "up" if row["netns"] else "gone",
        "sshd": "up" if row["sshd"] else "down",
    }


def write_status(
    out: TextIO,
    fmt: str,
    rows: Sequence[dict[str, object]],
    state: lab.LabState,
    ends: datetime.datetime,
) -> None:
    """Table: the boxes, then where the state is and when the processes stop; JSON:
    ``{"boxes", "state_dir", "stops_at", "aws_endpoint"}``; CSV: the boxes."""
    endpoint = state.aws.get("endpoint_url")
    if fmt == "json":
        write_json(
            out,
            {
                "boxes": list(rows),
                "state_dir": str(state.state_dir),
                "stops_at": iso_time(ends),
                "aws_endpoint": endpoint or None,
            },
        )
        return
    columns = [key for key, _ in STATUS_COLUMNS]
    if fmt == "csv":
        write_records(out, "csv", rows, columns)
        return
    headers = [heading for _, heading in STATUS_COLUMNS]
    write_records(out, "table", [status_record(r) for r in rows], columns, headers)
    out.write(safe(f"state: {state.state_dir}; processes stop by {iso_time(ends)}") + "\n")
    if endpoint:
        out.write(safe(f"AWS API (moto): {endpoint}") + "\n")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``natfleet lab`` and its actions."""
    parser = subparsers.add_parser(
        "lab",
        help="build or remove the local NAT-box lab (network namespaces, needs root)",
        description="A local lab of real Linux NAT boxes in network namespaces: MASQUERADE and "
        "a DNAT forward per box, sshd on 198.19.255.(10+i), real TCP/UDP/ICMP traffic, and a "
        "moto AWS API that lists the boxes. State and SSH files live in /run/natfleet-lab "
        "($NATFLEET_LAB_DIR); your ~/.ssh is never touched.",
        epilog="examples:\n  sudo natfleet lab up --boxes 3\n"
        '  eval "$(sudo natfleet lab env)" && natfleet summary\n'
        "  sudo natfleet lab status\n  sudo natfleet lab down",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="build the lab and print the variables to use it",
        description="Build N NAT boxes with traffic and sshd; print `export` lines to use them.",
        epilog="example:\n  sudo natfleet lab up --boxes 2 --no-aws",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--boxes", type=int, default=3, metavar="N", help="NAT boxes (default 3)")
    up.add_argument("--no-aws", action="store_true", help="do not start the moto AWS API")
    up.add_argument(
        "--lifetime",
        type=int,
        default=lab.DEFAULT_LIFETIME,
        metavar="SECONDS",
        help="every lab process stops by itself after this (default %(default)s)",
    )
    up.set_defaults(func=cmd_up)
    for name, func, text, example in (
        (
            "down",
            cmd_down,
            "remove every lab namespace, process and file",
            "sudo natfleet lab down",
        ),
        (
            "status",
            cmd_status,
            "show each box: namespace, sshd, conntrack entries",
            "sudo natfleet lab status",
        ),
        (
            "env",
            cmd_env,
            "print export lines that point natfleet at the lab",
            'eval "$(sudo natfleet lab env)"',
        ),
    ):
        action = actions.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "status":
            add_format_option(action)
        action.set_defaults(func=func)
