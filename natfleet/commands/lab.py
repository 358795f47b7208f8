"""``natfleet lab up|down|status|env``: the local network-namespace lab (needs root).

Example:
    $ sudo natfleet lab up --boxes 3
    $ eval "$(sudo natfleet lab env)" && natfleet summary
    $ sudo natfleet lab down
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TextIO

from natfleet import lab
from natfleet.errors import ExitCode, LabError
from natfleet.invocation import root_command
from natfleet.output import (
    Column,
    add_output_options,
    iso_time,
    safe,
    warn,
    write_lines,
    write_output,
)

STATUS_COLUMNS = (
    Column("name", "BOX"),
    Column("mgmt_ip", "MGMT IP"),
    Column("netns", "NETNS", cell=lambda r: "up" if r.get("netns") else "gone"),
    Column("sshd", "SSHD", cell=lambda r: "up" if r.get("sshd") else "down"),
    Column("conntrack", "CONNTRACK", kind="int"),
    Column("instance_id", "INSTANCE"),
)


def _log(message: str) -> None:
    warn(message)


def _env_lines(state: lab.LabState) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in state.env().items()]


def cmd_up(args: argparse.Namespace) -> int:
    """Build the lab, then print the lines that point natfleet at it."""
    state = lab.up(boxes=args.boxes, aws=not args.no_aws, log=_log, lifetime=args.lifetime)
    _log(f"ssh: ssh -F {state.ssh_config} {state.boxes[0].name}")
    _log(f'to use it (or: eval "$({root_command()} lab env)"):')
    print("\n".join(_env_lines(state)))
    return ExitCode.OK


def cmd_down(args: argparse.Namespace) -> int:
    """Remove every lab namespace, process and file."""
    lab.down(log=_log)
    return ExitCode.OK


def _root_state(action: str) -> lab.LabState:
    """The lab's state, which only root may read (say so, naming the command to run)."""
    if os.geteuid() != 0:
        raise LabError(f"the lab's state is root's: {root_command()} lab {action}")
    return lab.load_state()


def cmd_env(args: argparse.Namespace) -> int:
    """Print ``export VAR=value`` lines for a running lab."""
    print("\n".join(_env_lines(_root_state("env"))))
    return ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    """One row per box: namespace, sshd, conntrack entries; 1 when something is down."""
    state = _root_state("status")
    rows = lab.box_status(state)
    ends = datetime.datetime.fromtimestamp(state.started + state.lifetime, datetime.timezone.utc)
    write_status(sys.stdout, args.format, rows, state, ends, wide=args.wide)
    healthy = all(row["netns"] and row["sshd"] for row in rows)
    return ExitCode.OK if healthy else ExitCode.ERROR


def write_status(
    out: TextIO,
    fmt: str,
    rows: Sequence[dict[str, object]],
    state: lab.LabState,
    ends: datetime.datetime,
    wide: bool = False,
) -> None:
    """Table: the boxes (namespace up/gone, sshd up/down), then where the state is and when
    the processes stop (ISO 8601 UTC); JSON: the envelope with ``state_dir``, ``stops_at``
    and ``aws_endpoint``, a box a row; CSV and jsonl: the boxes."""
    endpoint = state.aws.get("endpoint_url") or None
    meta = {"state_dir": str(state.state_dir), "stops_at": iso_time(ends), "aws_endpoint": endpoint}
    write_output(out, fmt, "lab status", rows, STATUS_COLUMNS, wide=wide, meta=meta)
    if fmt == "table":
        lines = [f"state: {state.state_dir}; processes stop by {iso_time(ends)}"]
        if endpoint:
            lines.append(f"AWS API (moto): {endpoint}")
        write_lines(out, [safe(line) for line in lines])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``natfleet lab`` and its actions."""
    ROOT = root_command()  # how the help's examples name natfleet as root
    parser = subparsers.add_parser(
        "lab",
        help="build or remove the local NAT-box lab (network namespaces, needs root)",
        description="A local lab of real Linux NAT boxes in network namespaces: MASQUERADE and "
        "a DNAT forward per box, sshd on 198.19.255.(10+i), real TCP/UDP/ICMP traffic, and a "
        "moto AWS API that lists the boxes. State and SSH files live in /run/natfleet-lab "
        "($NATFLEET_LAB_DIR); your ~/.ssh is never touched.",
        epilog=f"examples:\n  {ROOT} lab up --boxes 3\n"
        f'  eval "$({ROOT} lab env)" && natfleet summary\n'
        f"  {ROOT} lab status\n  {ROOT} lab down",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="build the lab and print the variables to use it",
        description="Build N NAT boxes with traffic and sshd; print `export` lines to use them.",
        epilog=f"example:\n  {ROOT} lab up --boxes 2 --no-aws",
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
            f"{ROOT} lab down",
        ),
        (
            "status",
            cmd_status,
            "show each box: namespace, sshd, conntrack entries",
            f"{ROOT} lab status",
        ),
        (
            "env",
            cmd_env,
            "print export lines that point natfleet at the lab",
            f'eval "$({ROOT} lab env)"',
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
            add_output_options(action)
        action.set_defaults(func=func)
