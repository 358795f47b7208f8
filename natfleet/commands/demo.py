"""``natfleet demo``: the whole pipeline on the local lab, then teardown.

Builds the lab (NAT boxes in network namespaces, real traffic, sshd, a moto server playing
AWS on 127.0.0.1), runs natfleet against it exactly as a user would, and removes it all.

Example:
    $ sudo natfleet demo            # or, on a fresh clone: sudo ./dev demo
    $ sudo natfleet demo --keep     # leave the lab up afterwards (natfleet lab down)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Optional

from natfleet.errors import ExitCode, LabError


def examples() -> str:
    """The help's examples, with a root command that works in this install."""
    from natfleet.invocation import root_command

    sudo = root_command()
    return (
        "examples:\n"
        f"  {sudo} demo\n"
        "      lab up; discover, summary, conns, a short watch, snapshot and diff, summary\n"
        "      over SSM and with Instance Connect, compare, local, check; lab down (a lab\n"
        "      already up stays up)\n"
        f"  {sudo} demo --boxes 2 --keep\n"
        "  sudo ./dev demo      from a fresh clone: installs what is missing first\n"
    )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run natfleet end to end on the local lab (needs root; no AWS account)",
        description="Build the local lab, run discover, summary, conns, watch, snapshot, "
        "diff, summary --via ssm and --eic, compare, local and check against it, then tear it "
        "down. Everything stays inside the lab's own network "
        "namespaces and 127.0.0.1.",
        epilog=examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--boxes", type=int, default=3, help="NAT boxes in the lab (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.set_defaults(func=run)


def steps(work: str) -> list[tuple[list[str], bool]]:
    """(natfleet arguments, run inside the first box's namespace) in demo order; ``work`` is
    the demo's own folder (snapshots, and a key no box has authorized: ``work``/eic_key)."""
    return [
        (["discover"], False),
        (["summary"], False),
        (["conns", "-nN"], False),
        (["watch", "-p", "tcp", "--events", "--interval", "2", "--count", "4"], False),
        (["snapshot", "-o", f"{work}/before.snap.gz"], False),
        (["snapshot", "-o", f"{work}/after.snap.gz"], False),
        (["diff", f"{work}/before.snap.gz", f"{work}/after.snap.gz"], False),
        (["summary", "--via", "ssm"], False),  # no SSH at all: Run Command
        (["summary", "--eic", "-i", f"{work}/eic_key"], False),  # a key pushed for 60 s
        (["compare", "--since", "1h"], False),
        (["local", "-nN"], True),
        (["summary", "--local"], True),
        (["check"], False),
    ]


def running_boxes() -> Optional[int]:
    """How many boxes the lab that is up has, or None when none is (the demo then leaves
    a lab it did not start up, as it found it)."""
    from natfleet import lab

    try:
        state = lab.load_state()
    except LabError:
        return None
    return len(state.boxes) if lab.is_running(state) else None


def run(args: argparse.Namespace) -> int:
    from natfleet import lab
    from natfleet.invocation import root_command
    from natfleet.lab import traffic

    if os.geteuid() != 0:  # said here: the lab's own check would advise 'lab up'
        raise LabError(f"the demo needs root (network namespaces, iptables): {root_command()} demo")
    before = running_boxes()
    if before is not None and before != args.boxes:
        sudo = root_command()
        raise LabError(
            f"a lab of {before} boxes is up already and the demo leaves it as it is: run "
            f"'{sudo} demo --boxes {before}' to use it, or '{sudo} lab down' first"
        )
    keep = args.keep or before is not None
    state = lab.up(boxes=args.boxes, log=lambda msg: print(f"lab: {msg}", flush=True))
    env = {**os.environ, **state.env()}
    failures = 0
    work = tempfile.mkdtemp(prefix="natfleet-demo-")
    try:
        key = os.path.join(work, "eic_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=False)
        for argv, in_box in steps(work):
            # a TCP connection through box 1's NAT while the watch runs: its states change
            client = traffic.tcp_session(state.boxes[0]) if argv[0] == "watch" else None
            failures += _show(argv, env, state.boxes[0].netns if in_box else None)
            if client is not None:
                _reap(client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not keep:
            lab.down(log=lambda msg: print(f"lab: {msg}", flush=True))
        else:
            print("lab: left up (it was up before the demo, or --keep); use it with:")
            for key, value in state.env().items():
                print(f"  export {key}={value}")
            print(f"lab: take it down with: {root_command()} lab down")
    if failures:
        raise LabError(f"{failures} demo step(s) failed (see above)")
    return ExitCode.OK


def _reap(client: subprocess.Popen) -> None:
    """Wait for the demo's TCP client (it ends by itself), or end it by its PID."""
    try:
        client.wait(timeout=30)
    except subprocess.TimeoutExpired:
        client.kill()
        client.wait()


def _show(argv: Sequence[str], env: dict[str, str], netns: str | None) -> int:
    """Print the command as a user would type it, run it, return 1 if it failed."""
    where = f"[inside {netns}] " if netns else ""
    print(f"\n{where}$ natfleet {' '.join(argv)}", flush=True)
    command = [sys.executable, "-m", "natfleet", *argv]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    done = subprocess.run(command, env=env, timeout=300)
    if done.returncode not in (ExitCode.OK,):
        print(f"(exit code {done.returncode})", flush=True)
        return 1
    return 0
