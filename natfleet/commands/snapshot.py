"""``natfleet snapshot -o FILE``: save every box's listing and summary in one file.

Example:
    $ natfleet snapshot -o monday.snap.gz --host root@198.19.255.11
    natfleet: snapshot monday.snap.gz: 1 box (0 failed), 27 flows, 1.9KB
    $ natfleet conns -n --input monday.snap.gz -p tcp     # re-filter it offline
"""

from __future__ import annotations

import argparse
import sys

from natfleet.commands.targetopts import (
    add_target_options,
    box_progress,
    config_from_args,
    fleet_from_args,
    read_options_from_args,
)
from natfleet.errors import ExitCode, NatfleetError
from natfleet.output import human, warn
from natfleet.snapshot import SnapshotBox, found_by, now_iso, take, write_snapshot

EXAMPLES = """examples:
  natfleet snapshot -o monday.snap.gz              every NAT instance found in AWS
  natfleet snapshot -o now.snap.gz --host nat-a --host nat-b
  natfleet diff monday.snap.gz now.snap.gz         what changed, box by box
  natfleet conns -n --input now.snap.gz -S -r dst  re-filter and re-sort a snapshot offline
The file is gzip-compressed JSON lines (docs/json.md "Snapshot"), written atomically: a
temporary file in the same folder, renamed when complete.
exit codes: 0 every box saved, 1 error, 2 usage, 3 some boxes failed (saved as errors)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "snapshot",
        help="save every box's listing and summary in one compressed file",
        description="Read every target's whole table (every NAT kind) and its summary, and "
        "save them with the time, the target and how it was found.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the snapshot file")
    add_target_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.input:
        raise NatfleetError("snapshot reads boxes: --input is for conns, summary and diff")
    config = config_from_args(args)
    targets, unreachable, executor = fleet_from_args(args, config)
    if not targets and not unreachable:
        raise NatfleetError("no boxes to save (name them with --host, --hosts-file or --local)")
    progress = box_progress(sys.stderr)
    try:
        boxes = take(targets, executor, read_options_from_args(args, config), progress)
    finally:
        if progress is not None:
            progress.clear()
    boxes += [SnapshotBox(e.target, now_iso(), found_by(e.target), error=e) for e in unreachable]
    saved = write_snapshot(args.output, boxes)
    failed = [box.error for box in boxes if box.error is not None]
    for error in failed:
        warn(f"{error.target.label}: {error.kind}: {error.message}")
    warn(
        f"snapshot {args.output}: {saved['boxes']} boxes ({len(failed)} failed), "
        f"{saved['flows']:,} flows, {human(saved['bytes'], 'B')}"
    )
    if not failed:
        return ExitCode.OK
    return ExitCode.ERROR if len(failed) == len(boxes) else ExitCode.PARTIAL
