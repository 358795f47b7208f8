"""``natfleet watch``: translations appearing, changing state and going away, live, on every box.

Example:
    $ natfleet watch --host root@198.19.255.11 -p tcp --count 5 --format jsonl
    {"event":"start","time":"2026-12-01T21:00:00Z","target":{...},"mode":"interval",...}
    {"event":"update","time":"...","target":{...},"proto":"tcp","old":"SYN_SENT","new":...}
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, TextIO

from natfleet import agent_watch
from natfleet.aggregate import target_json
from natfleet.answer_watch import FlowEvent, Tick, WatchEnd, WatchFlow, WatchStart
from natfleet.commands.argtypes import positive
from natfleet.commands.flowopts import NETSTAT_EPILOG, add_flow_options, request_from_args
from natfleet.commands.targetopts import (
    add_target_options,
    config_from_args,
    fleet_from_args,
)
from natfleet.errors import ExitCode, NatfleetError, UsageError
from natfleet.models import Target
from natfleet.output import (
    Column,
    cut,
    ellipsis_for,
    is_terminal,
    json_line,
    safe,
    table_lines,
    terminal_width,
    warn,
)
from natfleet.watch import BoxEvent, watch_fleet, watch_request

EXAMPLES = """examples:
  natfleet watch --host root@198.19.255.11              the screen, until Ctrl-C or 10 min
  natfleet watch -p tcp -S --interval 1 --duration 120  every NAT instance found in AWS
  natfleet watch --host nat-a --events                  follow conntrack -E (short flows too)
  natfleet watch --local --count 3 --format jsonl | jq -c 'select(.event == "update")'
The screen: a header line per box (flows, fill, new and closed per second, drops, the worst
port pressure), then every watched flow with its box, translation and state; a change shows as
SYN_SENT > ESTABLISHED, highlighted for a few intervals; closed flows fade out. Not on a
terminal (or --format jsonl): one JSON object per line per event (docs/json.md, "Watch").
exit codes: 0 every box watched to the end, 1 error, 2 usage, 3 some boxes failed
"""

PORTED = ("tcp", "udp", "udplite", "sctp", "dccp")  # shown with ports (ICMP ids are not)
HIGHLIGHT_INTERVALS = 3  # a changed flow is highlighted this many intervals
FADE_INTERVALS = 3  # a closed flow stays (dimmed) this many intervals
REDRAW_SECONDS = 0.25  # the screen redraws at most this often


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "watch",
        help="live: translations appearing, changing state and going away, on every box",
        description="One long-lived agent session per box sends only what changed: a flow "
        "appeared, changed state, went away, and each interval the box's figures. "
        + NETSTAT_EPILOG,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler="resolve",
    )
    add_flow_options(parser)
    parser.add_argument(
        "--format",
        choices=("screen", "jsonl"),
        help="screen (the default on a terminal) or jsonl (one JSON object per event, the "
        "default otherwise)",
    )
    parser.add_argument(
        "--limit",
        type=positive(int),
        metavar="N",
        help=f"flows each box lists at the start (default {agent_watch.LISTED_DEFAULT}); "
        "changes are always sent",
    )
    w = parser.add_argument_group("watch")
    w.add_argument(
        "--interval",
        type=float,
        default=agent_watch.INTERVAL_DEFAULT,
        metavar="SECONDS",
        help=f"seconds between table reads and box figures (default "
        f"{agent_watch.INTERVAL_DEFAULT:g}, {agent_watch.INTERVAL_MIN:g} to "
        f"{agent_watch.INTERVAL_MAX:g})",
    )
    w.add_argument(
        "--duration",
        type=_duration,
        default=agent_watch.DURATION_DEFAULT,
        metavar="TIME",
        help="how long to watch: seconds, or 90s, 10m, 2h (default 10m, at most 4h)",
    )
    w.add_argument(
        "--count", type=positive(int), metavar="N", help="stop after N intervals (default: none)"
    )
    w.add_argument(
        "--events",
        action="store_true",
        help="follow the kernel's event stream (conntrack -E on the box, large netlink "
        "buffer; lost events are counted) instead of comparing table reads: flows shorter "
        "than an interval are seen too",
    )
    add_target_options(parser)
    parser.set_defaults(func=run)


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or not 0 < int(number) * units[unit] <= agent_watch.DURATION_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a duration of 1s to 4h (seconds, or 90s, 10m, 2h)"
        )
    return int(number) * units[unit]


def run(args: argparse.Namespace) -> int:
    if args.input:
        raise UsageError("watch reads live boxes: --input is for conns, summary and diff")
    listing = request_from_args(args)
    request = watch_request(
        listing["filters"], args.interval, args.duration, args.count, args.events, args.limit
    )
    config = config_from_args(args)
    if (args.via or config.ssm.via) != "ssh":
        raise UsageError(
            "watch keeps a live session per box, which SSM Run Command cannot: use --via ssh "
            "(with --eic for boxes without a key of yours)"
        )
    targets, unreachable, executor = fleet_from_args(args, config)
    for error in unreachable:
        warn(f"{error.target.label}: {error.kind}: {error.message}")
    if not targets:
        raise NatfleetError("no boxes to watch (name them with --host, --hosts-file or --local)")
    fmt = args.format or ("screen" if is_terminal(sys.stdout) else "jsonl")
    failed = set()
    events = _stopping(watch_fleet(targets, request, executor))
    try:
        if fmt == "jsonl":
            for event in events:
                if event.error is not None:
                    failed.add(event.target)
                line = event_json(event)
                if line is not None:
                    sys.stdout.write(json_line(line))
                    sys.stdout.flush()
        else:
            failed = Screen(sys.stdout, args, targets).run(events)
    except KeyboardInterrupt:
        return 130
    finally:
        events.close()
    for target in failed:
        warn(f"{target.label}: the watch failed (see its error)")
    if not failed and not unreachable:
        return ExitCode.OK
    return ExitCode.ERROR if len(failed) == len(targets) else ExitCode.PARTIAL


def _stopping(events: Iterator[BoxEvent]) -> Generator[BoxEvent, None, None]:
    """``events``, with SIGTERM turned into KeyboardInterrupt while they are read."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield from events
    finally:
        signal.signal(signal.SIGTERM, previous)
        close = getattr(events, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- JSON lines


def _stamp(event: BoxEvent, kind: str) -> dict[str, Any]:
    when = time.gmtime(event.time)
    return {
        "event": kind,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
        "target": target_json(event.target),
    }


def event_json(event: BoxEvent) -> Optional[dict[str, Any]]:
    """One JSON line of ``watch --format jsonl`` (docs/json.md "Watch"), or None (``done``)."""
    if event.error is not None:
        line = _stamp(event, "error")
        line.update(kind=event.error.kind, error=event.error.message)
        return line
    record = event.record
    if isinstance(record, FlowEvent):
        line = _stamp(event, record.kind)
        line["box_t"] = record.at
        line.update(record.flow.to_json())
        if record.kind == "update":
            line["old"] = record.old
            line["new"] = record.flow.status
        return line
    if isinstance(record, Tick):
        line = _stamp(event, "tick")
        data = dict(vars(record))
        data["box_t"] = data.pop("at")
        data["pressure"] = vars(record.pressure).copy() if record.pressure else None
        line.update(data)
        return line
    if isinstance(record, WatchStart):
        line = _stamp(event, "start")
        facts = record.facts
        line.update(
            hostname=facts.hostname,
            source=facts.source,
            count=facts.count,
            max=facts.max,
            mode=record.mode,
            interval=record.interval,
            duration=record.duration,
            intervals=record.intervals,
            flows=record.flows,
            listed=record.listed,
            warnings=list(record.warnings),
        )
        return line
    if isinstance(record, WatchEnd):
        line = _stamp(event, "end")
        line.update(box_t=record.at, reason=record.reason, lost=record.lost)
        return line
    return None


# --------------------------------------------------------------------------- the screen


@dataclass
class Shown:
    """A flow on the screen: its latest form, the state it left, when it changed or closed."""

    target: Target
    flow: WatchFlow
    old: Optional[str] = None
    changed: float = 0.0
    closed: Optional[float] = None


@dataclass
class BoxLine:
    target: Target
    start: Optional[WatchStart] = None
    tick: Optional[Tick] = None
    error: Optional[str] = None
    ended: bool = False
    lost: int = 0


SCREEN_COLUMNS = (
    Column("box", "BOX", shrink=True),
    Column("proto", "PROTO"),
    Column("source", "SOURCE", shrink=True),
    Column("nat_host", "NAT HOST", shrink=True),
    Column("destination", "DESTINATION", shrink=True),
    Column("state", "STATE"),
)
SORTS = {
    "src": lambda s: (s.flow.osrc, s.flow.osport or 0),
    "dst": lambda s: (s.flow.shown()[2][0], s.flow.shown()[2][1] or 0),
    "src-port": lambda s: (s.flow.osport or 0,),
    "dst-port": lambda s: (s.flow.shown()[2][1] or 0,),
    "state": lambda s: (s.flow.status,),
}


def _endpoint(addr: str, port: Optional[int]) -> str:
    if not addr:
        return "-"
    shown = f"[{addr}]" if ":" in addr and port is not None else addr
    return shown if port is None else f"{shown}:{port}"


class Screen:
    """The redrawing screen: per box a header line, then the flows; restores the terminal
    (cursor, main screen) however it ends."""

    def __init__(self, out: TextIO, args: argparse.Namespace, targets: list[Target]) -> None:
        self.out = out
        self.sort = args.sort or "src"
        self.wide = args.wide
        self.interval = args.interval
        self.boxes = {t: BoxLine(t) for t in targets}
        self.flows: dict[tuple[Target, tuple[Any, ...]], Shown] = {}
        self.color = not _no_color()
        self.started = time.time()

    def run(self, events: Iterable[BoxEvent]) -> set[Target]:
        self.out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor
        self.out.flush()
        try:
            last = 0.0
            for event in events:
                self.take(event)
                now = time.monotonic()
                if now - last >= REDRAW_SECONDS:
                    self.draw()
                    last = now
            self.draw()
        finally:
            self.out.write("\x1b[?25h\x1b[?1049l")  # the cursor and the screen as they were
            self.out.flush()
        failed = {b.target for b in self.boxes.values() if b.error is not None}
        for line in self.summary():
            self.out.write(line + "\n")
        return failed

    def take(self, event: BoxEvent) -> None:
        box = self.boxes[event.target]
        if event.error is not None:
            box.error = f"{event.error.kind}: {event.error.message}"
            return
        record, now = event.record, event.time
        if isinstance(record, WatchStart):
            box.start = record
        elif isinstance(record, Tick):
            box.tick = record
            box.lost += record.lost
        elif isinstance(record, WatchEnd):
            box.ended = True
        elif isinstance(record, FlowEvent):
            key = (event.target, record.flow.key)
            if record.kind == "destroy":
                shown = self.flows.get(key) or Shown(event.target, record.flow)
                shown.closed = now
                self.flows[key] = shown
            elif record.kind == "update":
                self.flows[key] = Shown(event.target, record.flow, record.old, now)
            else:
                changed = now if record.kind == "new" else 0.0
                self.flows[key] = Shown(event.target, record.flow, None, changed)

    def box_line(self, box: BoxLine) -> str:
        label = box.target.label if self.wide else box.target.short_label
        if box.error:
            return f"{label}  ERROR {box.error}"
        if box.tick is None:
            return f"{label}  " + ("watching..." if box.start else "connecting...")
        t = box.tick
        fill = "?" if t.fill_pct is None else f"{t.fill_pct:.2f}%"
        drops = sum(v or 0 for v in (t.insert_failed, t.drop, t.early_drop))
        text = (
            f"{label}  flows {t.flows:,}  fill {fill}  new {t.new_per_s:g}/s  "
            f"closed {t.closed_per_s:g}/s  drops +{drops}"
        )
        if t.pressure is not None:
            p = t.pressure
            pct = "" if p.pct is None else f" {p.pct:.2f}%"
            text += f"  pressure {p.nat_ip}>{p.dst}:{p.dport} {p.ports} ports{pct}"
        if box.lost:
            text += f"  LOST EVENTS {box.lost}"
        if box.ended:
            text += "  (ended)"
        return text

    def rows(self, now: float) -> list[tuple[dict[str, Any], str]]:
        span = max(self.interval, 0.5)
        for key in [
            k for k, s in self.flows.items() if s.closed and now - s.closed > FADE_INTERVALS * span
        ]:
            del self.flows[key]
        shown = sorted(self.flows.values(), key=lambda s: (s.target.label, SORTS[self.sort](s)))
        rows = []
        for s in shown:
            source, nat_host, destination = s.flow.shown()
            if s.flow.proto not in PORTED:
                source, nat_host, destination = ((a, None) for a, _p in s.flow.shown())
            state = s.flow.status
            if s.old and now - s.changed <= HIGHLIGHT_INTERVALS * span:
                state = f"{s.old} > {state}"
            style = ""
            if s.closed:
                state += " (closed)"
                style = "\x1b[2m"
            elif s.changed and now - s.changed <= HIGHLIGHT_INTERVALS * span:
                style = "\x1b[7m"
            record = {
                "box": s.target.label if self.wide else s.target.short_label,
                "proto": s.flow.proto,
                "source": _endpoint(*source),
                "nat_host": _endpoint(*nat_host),
                "destination": _endpoint(*destination),
                "state": state,
            }
            rows.append((record, style))
        return rows

    def draw(self) -> None:
        width = min(terminal_width(self.out) or 120, 120) if not self.wide else None
        height = _terminal_height(self.out)
        ellipsis = ellipsis_for(self.out)
        now = time.time()
        elapsed = int(now - self.started)
        lines = [
            f"natfleet watch  {len(self.boxes)} boxes  every {self.interval:g}s  "
            f"{elapsed // 60}:{elapsed % 60:02d}  (Ctrl-C to stop)"
        ]
        lines += [self.box_line(box) for box in self.boxes.values()]
        lines = [cut(safe(line), width, ellipsis) if width else safe(line) for line in lines]
        rows = self.rows(now)
        room = max(height - len(lines) - 2, 1)
        table = table_lines(
            [r for r, _s in rows[:room]], SCREEN_COLUMNS, self.wide, width, ellipsis
        )
        styles = [""] + [s for _r, s in rows[:room]]
        body = [""] + [
            (style + line + "\x1b[0m") if style and self.color else line
            for line, style in zip(table, styles)
        ]
        if len(rows) > room:
            body.append(f"... and {len(rows) - room} more flows (narrow it with -p -s -d -S -D)")
        frame = "\x1b[H" + "".join(line + "\x1b[K\n" for line in lines + body) + "\x1b[J"
        self.out.write(frame)
        self.out.flush()

    def summary(self) -> list[str]:
        """What stays on the terminal after the screen closed: a line per box."""
        return [safe(self.box_line(box)) for box in self.boxes.values()]


def _terminal_height(out: TextIO) -> int:
    """The terminal's lines: ``LINES`` when set, else its size, else 40."""
    text = os.environ.get("LINES", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        return os.get_terminal_size(out.fileno()).lines or 40
    except (AttributeError, OSError, ValueError):
        return 40


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
