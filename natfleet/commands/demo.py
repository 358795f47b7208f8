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
import subprocess
import sys
from collections.abc import Sequence

from natfleet.errors import ExitCode, LabError

EXAMPLES = """examples:
  sudo natfleet demo               lab up, discover, summary, conns, compare, lab down
  sudo natfleet demo --boxes 2 --keep
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run natfleet end to end on the local lab (needs root; no AWS account)",
        description="Build the local lab, run discover, summary, conns, compare and local "
        "against it, then tear it down. Everything stays inside the lab's own network "
        "namespaces and 127.0.0.1.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--boxes", type=int, default=3, help="NAT boxes in the lab (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.set_defaults(func=run)


def steps() -> list[tuple[list[str], bool]]:
    """(natfleet arguments, run inside the first box's namespace) in demo order."""
    return [
        (["discover"], False),
        (["summary"], False),
        (["conns", "-nN"], False),
        (["compare", "--since", "1h"], False),
        (["local", "-nN"], True),
        (["summary", "--local"], True),
    ]


def _already_up(boxes: int) -> bool:
    """True when a lab of ``boxes`` boxes is running already (the demo then leaves it up)."""
    from natfleet import lab

    try:
        state = lab.load_state()
    except LabError:
        return False
    return len(state.boxes) == boxes and lab.is_running(state)


def run(args: argparse.Namespace) -> int:
    from natfleet import lab

    keep = args.keep or _already_up(args.boxes)
    state = lab.up(boxes=args.boxes, log=lambda msg: print(f"lab: {msg}", flush=True))
    env = {**os.environ, **state.env()}
    failures = 0
    try:
        for argv, in_box in steps():
            failures += _show(argv, env, state.boxes[0].netns if in_box else None)
    finally:
        if not keep:
            lab.down(log=lambda msg: print(f"lab: {msg}", flush=True))
        else:
            print("lab: left up (it was up before the demo, or --keep); use it with:")
            for key, value in state.env().items():
                print(f"  export {key}={value}")
    if failures:
        raise LabError(f"{failures} demo step(s) failed (see above)")
    return ExitCode.OK


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
