"""natfleet's benchmark: speed and memory against the reference tools, same machine, one run.

Run by hand (not by CI), as root: sudo ./dev bench (set up: sudo .venv/bin/python bench/bench.py)

Three rounds, each on a lab of its own (natfleet.lab.up: the nflab namespaces, so never while
another lab is up):

1. fleet summary: ``natfleet summary`` over SSH on 1 and on 20 boxes, next to bare OpenSSH.
2. full tables: 4 boxes, each loaded with 250,000 exact entries (``conntrack -R``,
   natfleet.lab.bench.load_table; ``nf_conntrack_max`` raised for the run and put back);
   ``natfleet conns -n`` over SSH to the 4 boxes in netstat text, jsonl and CSV: bytes the
   boxes sent per flow (counted at each box's management interface), natfleet's own peak RSS
   and CPU seconds (GNU time: the laptop side only; the boxes' agents and sshd are not its
   children), and wall time.
3. one box's table (the first box of round 2): ``cat /proc/net/nf_conntrack``, ``conntrack
   -L``, ``natfleet summary --local`` (and ``--jobs 1``), ``natfleet local -n``, the same
   table saved to a file read by ``natfleet conns -n --input`` and ``natfleet local -n
   --input``, and netstat-nat on a smaller table (it is quadratic); best of N runs each.

It prints every figure with its goal and whether it was met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natfleet import lab  # noqa: E402
from natfleet.errors import LabError  # noqa: E402
from natfleet.lab.bench import (  # noqa: E402
    conntrack_count,
    conntrack_max_at_least,
    load_table,
    table_nat_ip,
    table_sources,
)
from natfleet.lab.churn import churn  # noqa: E402
from natfleet.lab.system import netns_argv, run  # noqa: E402

NATFLEET = [sys.executable, "-m", "natfleet"]
# runs a command under GNU time (peak RSS in KiB and CPU seconds are the command's own and
# its children's: a Python wrapper's fork would count the wrapper too), reads its stdout
# (counting lines) and prints wall time, RSS, CPU and the line count as JSON
MEASURE = (
    "import json,os,subprocess,sys,tempfile,time;f=tempfile.mktemp();t=time.perf_counter();"
    "p=subprocess.Popen(['/usr/bin/time','-f','%M %U %S','-o',f]+sys.argv[1:],"
    "stdout=subprocess.PIPE,stderr=subprocess.DEVNULL);n=0\n"
    "for b in iter(lambda:p.stdout.read(1<<20),b''):n+=b.count(b'\\n')\n"
    "r=p.wait();s=time.perf_counter()-t;m,u,y=open(f).read().split()[-3:];os.unlink(f);"
    "print(json.dumps({'seconds':s,'rc':r,'rss_kib':int(m),'cpu':float(u)+float(y),'lines':n}))"
)
TX_BYTES = "/sys/class/net/mgmt0/statistics/tx_bytes"  # a lab box's management link


@dataclass
class Figure:
    """One measured command: best wall time of N runs, largest peak RSS, CPU of the best run."""

    name: str
    flows: int
    seconds: float
    rss_mb: float
    cpu: float
    lines: int
    bytes_per_flow: Optional[float] = None


def measure(
    name: str,
    argv: list[str],
    flows: int,
    repeat: int,
    netns: Optional[str] = None,
    env: Optional[dict] = None,
    timeout: float = 600,
) -> Figure:
    """Run ``argv`` ``repeat`` times (inside ``netns`` if given) under GNU time."""
    best: Optional[dict] = None
    rss = 0
    command = [sys.executable, "-c", MEASURE, *argv]
    if netns:
        command = netns_argv(netns, command)
    for _ in range(repeat):
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        got = json.loads(done.stdout)
        if got["rc"] != 0:
            raise SystemExit(f"bench: {' '.join(argv)} exited {got['rc']}")
        rss = max(rss, got["rss_kib"])
        if best is None or got["seconds"] < best["seconds"]:
            best = got
    assert best is not None
    figure = Figure(name, flows, best["seconds"], rss / 1024, best["cpu"], best["lines"])
    print(f"  {name}: {figure.seconds:.3f} s, {figure.rss_mb:.1f} MB", file=sys.stderr, flush=True)
    return figure


def tx_bytes(netns: str) -> int:
    return int(run(netns_argv(netns, ["cat", TX_BYTES])).strip())


def fleet_summary(env: dict, hosts: list[str], repeat: int) -> tuple[float, list[dict]]:
    """Best wall time of ``natfleet summary`` over SSH to ``hosts``, and its JSON rows (one
    per box that answered)."""
    argv = [*NATFLEET, "summary", "--format", "json", "--parallel", str(len(hosts))]
    for host in hosts:
        argv += ["--host", host]
    best, boxes = float("inf"), []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"bench: natfleet summary failed: {done.stderr.strip()}")
        if took < best:
            best, boxes = took, json.loads(done.stdout)["rows"]
    return best, boxes


def bare_ssh(env: dict, hosts: list[str], repeat: int) -> float:
    """Best wall time of OpenSSH running ``python3 -c pass`` on every host at once: the
    floor any SSH tool pays here, where every lab box shares this machine's cores."""
    best = float("inf")
    ssh = ["ssh", "-F", env["NATFLEET_SSH_CONFIG"], "-o", "BatchMode=yes"]
    for _ in range(repeat):
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*ssh, host, "python3", "-c", "pass"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            for host in hosts
        ]
        if any(p.wait(timeout=120) for p in procs):
            raise SystemExit("bench: ssh to a lab box failed")
        best = min(best, time.perf_counter() - started)
    return best


def round_fleet_summary(args: argparse.Namespace, log) -> dict:
    """Round 1: natfleet summary over SSH, 1 box and ``--boxes`` boxes, and bare OpenSSH."""
    fleet: dict = {}
    state = lab.up(boxes=args.boxes, aws=False, log=log)
    env = {**os.environ, **state.env()}
    hosts = [b.name for b in state.boxes]
    try:
        fleet["one"], small = fleet_summary(env, hosts[:1], args.repeat)
        fleet["all"], _ = fleet_summary(env, hosts, args.repeat)
        fleet["bare_one"] = bare_ssh(env, hosts[:1], args.repeat)
        fleet["bare_all"] = bare_ssh(env, hosts, args.repeat)
        fleet["small_flows"] = small[0]["summary"]["flows"]
        fleet["small_bytes"] = small[0]["transport"]["bytes_received"]
    finally:
        lab.down(log=log)
    return fleet


def round_full_tables(args: argparse.Namespace, log) -> tuple[list[Figure], list[Figure], dict]:
    """Rounds 2 and 3 on one lab of 4 boxes with full tables: (fleet figures, one-box
    figures, facts)."""
    fleet_rows: list[Figure] = []
    rows: list[Figure] = []
    facts: dict = {}
    with conntrack_max_at_least(args.flows + 65536) as table_max:
        facts["conntrack_max"] = table_max
        state = lab.up(boxes=args.fleet_boxes, aws=False, log=log)
        env = {**os.environ, **state.env()}
        boxes = state.boxes
        first = boxes[0]
        ns = first.netns
        try:
            # netstat-nat first, on a small table (it sorts in O(n^2))
            inside, nat_ip = table_sources(first), table_nat_ip(first)
            load_table(ns, args.netstat_flows, inside, nat_ip, args.entry_timeout)
            small = conntrack_count(ns)
            print(f"table: {small} flows (netstat-nat round)", file=sys.stderr, flush=True)
            rows.append(measure("netstat-nat -n", ["netstat-nat", "-n"], small, 1, ns, None, 1800))
            rows.append(measure("natfleet local -n", [*NATFLEET, "local", "-n"], small, 3, ns))
            # every box's full table
            started = time.perf_counter()
            more = args.flows - args.netstat_flows
            load_table(ns, more, inside, nat_ip, args.entry_timeout, args.netstat_flows)
            for box in boxes[1:]:
                sources = table_sources(box)
                load_table(box.netns, args.flows, sources, table_nat_ip(box), args.entry_timeout)
            facts["load_seconds"] = time.perf_counter() - started
            counts = [conntrack_count(box.netns) for box in boxes]
            facts["counts"] = counts
            print(f"tables: {counts} flows", file=sys.stderr, flush=True)
            fleet_rows = fleet_listings(args, env, boxes, counts)
            rows += one_box(args, ns, counts[0])
            facts["watch"] = []
            for mode in WATCH_MODES:
                try:
                    facts["watch"].append(watch_round(args, env, first, mode))
                except (SystemExit, LabError, subprocess.SubprocessError) as exc:
                    print(f"bench: the watch round ({mode}) failed: {exc}", file=sys.stderr)
            _, big = fleet_summary(env, [first.name], 1)
            facts["big_flows"] = big[0]["summary"]["flows"]
            facts["big_bytes"] = big[0]["transport"]["bytes_received"]
        finally:
            if not args.keep:
                lab.down(log=log)
    return fleet_rows, rows, facts


def fleet_listings(args: argparse.Namespace, env: dict, boxes: list, counts: list[int]) -> list:
    """natfleet conns -n over SSH to every box, in netstat text, jsonl and CSV."""
    argv = [*NATFLEET, "conns", "-n", "--parallel", str(len(boxes)), "--timeout", "600"]
    for box in boxes:
        argv += ["--host", box.name]
    flows = sum(counts)
    figures = []
    for fmt in ("netstat", "jsonl", "csv"):
        name = f"natfleet conns -n ({fmt}), {len(boxes)} boxes"
        extra = [] if fmt == "netstat" else ["--format", fmt]
        sent = [tx_bytes(box.netns) for box in boxes]
        figure = measure(name, argv + extra, flows, args.fleet_repeat, None, env, timeout=900)
        sent = [tx_bytes(box.netns) - before for box, before in zip(boxes, sent)]
        figure.bytes_per_flow = sum(sent) / args.fleet_repeat / flows
        if figure.lines < flows - 1000:  # (the lab's own flows are local: not listed)
            raise SystemExit(f"bench: {name} printed {figure.lines} lines for {flows} flows")
        figures.append(figure)
    return figures


def one_box(args: argparse.Namespace, ns: str, flows: int) -> list[Figure]:
    """Round 3: every tool on one box's full table, and the table saved to a file."""
    rows = []
    tools = [
        ("cat /proc/net/nf_conntrack", ["cat", "/proc/net/nf_conntrack"]),
        ("conntrack -L", ["conntrack", "-L"]),
        ("natfleet summary --local", [*NATFLEET, "summary", "--local"]),
        ("natfleet summary --local --jobs 1", [*NATFLEET, "summary", "--local", "--jobs", "1"]),
        ("natfleet local -n", [*NATFLEET, "local", "-n"]),
    ]
    for name, argv in tools:
        rows.append(measure(name, argv, flows, args.repeat, ns))
    with tempfile.NamedTemporaryFile("w", prefix="natfleet-bench-", suffix=".txt") as saved:
        subprocess.run(netns_argv(ns, ["cat", "/proc/net/nf_conntrack"]), stdout=saved, check=True)
        for name, command in (("local", "local"), ("conns", "conns")):
            argv = [*NATFLEET, command, "-n", "--input", saved.name]
            rows.append(measure(f"natfleet {name} -n --input FILE", argv, flows, args.repeat))
    return rows


WATCH_MODES = ("interval", "events")
WATCH_INTERVAL = 2.0


def watch_round(args: argparse.Namespace, env: dict, box, mode: str) -> dict:
    """``natfleet watch`` over SSH on ``box``'s full table while a steady churn runs
    (natfleet.lab.churn: ``--watch-churn`` entries loaded every interval that expire 3 s
    later, so about twice as many changes an interval): bytes the box sent per interval,
    the box's CPU per steady interval (from its ticks), natfleet's own CPU per event."""
    intervals = args.watch_intervals
    argv = [*NATFLEET, "watch", "--host", box.name, "--format", "jsonl", "--count"]
    argv += [str(intervals), "--interval", str(WATCH_INTERVAL), "--duration", "10m"]
    argv += ["--events"] if mode == "events" else []
    stop = threading.Event()
    churning = threading.Thread(
        target=churn,
        args=(box.netns, args.watch_churn, intervals + 4, WATCH_INTERVAL),
        kwargs={
            "inside": table_sources(box),
            "nat_ip": table_nat_ip(box),
            "start": args.flows,
            "timeout": 3,
            "stop": stop,
        },  # fmt: skip
        daemon=True,
    )
    sent = tx_bytes(box.netns)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    churning.start()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        churning.join(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sent = tx_bytes(box.netns) - sent
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]}")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return watch_figures(mode, events, sent, after.ru_utime + after.ru_stime
                         - before.ru_utime - before.ru_stime)  # fmt: skip


def watch_figures(mode: str, events: list[dict], sent: int, laptop_cpu: float) -> dict:
    """The watch round's figures from natfleet's jsonl events: box CPU per steady interval
    (the ticks after the first two), changes and bytes per interval, laptop CPU per event.

    >>> ticks = [{"event": "tick", "cpu": c, "new": 9, "closed": 9} for c in (2, 2, .5, .7)]
    >>> f = watch_figures("interval", ticks, 40_000, 0.004)
    >>> f["box_cpu"], f["changes"], f["bytes_per_interval"], f["events_per_cpu_s"]
    (0.7, 18.0, 10000.0, 1000.0)
    """
    ticks = [e for e in events if e.get("event") == "tick"]
    steady = ticks[2:] or ticks
    changes = [t.get("new", 0) + t.get("closed", 0) for t in steady]
    return {
        "mode": mode,
        "intervals": len(ticks),
        "box_cpu": max((t.get("cpu") or 0.0) for t in steady) if steady else 0.0,
        "changes": sum(changes) / len(changes) if changes else 0.0,
        "bytes_per_interval": sent / max(len(ticks), 1),
        "events_per_cpu_s": len(events) / laptop_cpu if laptop_cpu > 0 else float("inf"),
        "lost": sum(t.get("lost") or 0 for t in ticks),
    }


def goal(text: str, value: float, most: float) -> tuple[str, str]:
    """(what was measured, "met" or by how much it missed) for a goal of at most ``most``."""
    return text, "met" if value <= most else f"MISSED by {(value - most) / most * 100:.0f}%"


def report(args, fleet: dict, fleet_rows: list[Figure], rows: list[Figure], facts: dict) -> None:
    """Print every figure, then every goal with met or missed."""
    by = {r.name: r for r in rows}
    reference = by["conntrack -L"].seconds
    big = by["conntrack -L"].flows
    print(
        f"\n{'tool, one box':<40}{'flows':>9}{'seconds':>9}{'x ct -L':>9}{'RSS MB':>8}{'CPU s':>7}"
    )
    for r in rows:
        ratio = f"{r.seconds / reference:.2f}" if r.flows == big else "-"
        print(f"{r.name:<40}{r.flows:>9}{r.seconds:>9.3f}{ratio:>9}{r.rss_mb:>8.1f}{r.cpu:>7.2f}")
    heading = f"{'fleet listing over SSH':<40}{'flows':>9}{'seconds':>9}{'B/flow':>8}"
    print(f"\n{heading}{'RSS MB':>8}{'CPU s':>7}{'CPU/250k':>9}")
    for r in fleet_rows:
        cpu_per = r.cpu / (r.flows / 250_000)
        print(
            f"{r.name:<40}{r.flows:>9}{r.seconds:>9.2f}{r.bytes_per_flow or 0:>8.2f}"
            f"{r.rss_mb:>8.1f}{r.cpu:>7.2f}{cpu_per:>9.2f}"
        )
    print(
        f"\n(tables loaded with conntrack -R in {facts['load_seconds']:.1f} s: {facts['counts']}; "
        f"nf_conntrack_max {facts['conntrack_max']} for the run, then put back)"
    )
    summary, listing = by["natfleet summary --local"], by["natfleet local -n"]
    conns_in, local_in = by["natfleet conns -n --input FILE"], by["natfleet local -n --input FILE"]
    x_summary, x_listing = summary.seconds / reference, listing.seconds / reference
    x_input = conns_in.seconds / local_in.seconds
    goals = [
        goal(f"summary --local {x_summary:.2f}x conntrack -L (goal <= 1.0x)", x_summary, 1.0),
        goal(f"summary --local peak RSS {summary.rss_mb:.1f} MB (goal < 64)", summary.rss_mb, 64),
        goal(f"local -n {x_listing:.2f}x conntrack -L (goal <= 2.0x)", x_listing, 2.0),
        goal(f"conns -n --input {x_input:.2f}x local -n --input (goal <= 1.0x)", x_input, 1.0),
    ]
    for r in fleet_rows:
        cpu_per = r.cpu / (r.flows / 250_000)
        goals.append(goal(f"{r.name}: peak RSS {r.rss_mb:.0f} MB (goal < 250)", r.rss_mb, 250))
        text = f"{r.name}: natfleet CPU {cpu_per:.2f} s per 250,000 flows (goal < 1)"
        goals.append(goal(text, cpu_per, 1.0))
    for r in fleet_rows[:1]:
        wire = r.bytes_per_flow or 0.0
        goals.append(goal(f"conns over SSH: {wire:.2f} bytes per flow (goal <= 8)", wire, 8.0))
    ratio, bare = fleet["all"] / fleet["one"], fleet["bare_all"] / fleet["bare_one"]
    text = (
        f"summary over SSH: {args.boxes} boxes {fleet['all']:.2f} s, 1 box {fleet['one']:.2f} s:"
        f" {ratio:.2f}x (goal <= 1.5x; bare OpenSSH {bare:.2f}x)"
    )
    goals.append(goal(text, ratio, 1.5))
    text = (
        f"summary over SSH: {fleet['small_bytes']} bytes at {fleet['small_flows']} flows, "
        f"{facts['big_bytes']} at {facts['big_flows']} (goal < 16 KB)"
    )
    goals.append(goal(text, max(fleet["small_bytes"], facts["big_bytes"]) / 1024, 16))
    for w in facts.get("watch", []):
        print(
            f"watch ({w['mode']}): {w['intervals']} intervals of {WATCH_INTERVAL:.0f} s, "
            f"{w['changes']:.0f} changes an interval, box CPU {w['box_cpu']:.2f} s an interval "
            f"(the worst steady one), {w['bytes_per_interval'] / 1024:.1f} KB an interval, "
            f"natfleet {w['events_per_cpu_s']:,.0f} events per CPU second, lost {w['lost']}"
        )
        most = 1.0 if w["mode"] == "interval" else 0.2
        text = f"watch {w['mode']}: box CPU {w['box_cpu']:.2f} s an interval (goal < {most})"
        goals.append(goal(text, w["box_cpu"], most))
        kb = w["bytes_per_interval"] / 1024
        goals.append(goal(f"watch {w['mode']}: {kb:.1f} KB an interval (goal < 100)", kb, 100))
        capacity = w["events_per_cpu_s"]
        text = f"watch {w['mode']}: natfleet {capacity:,.0f} events per CPU second (goal >= 5,000)"
        goals.append(goal(text, 5000 / capacity if capacity else float("inf"), 1.0))
    netstat, ours = rows[0], rows[1]
    print(
        f"netstat-nat -n took {netstat.seconds / ours.seconds:.0f}x as long as natfleet local -n "
        f"at {netstat.flows} flows (no goal)"
    )
    print("\ngoals:")
    for text, result in goals:
        print(f"  {result:<14} {text}")
    per = fleet_rows[0].flows // len(fleet_rows and facts["counts"]) if fleet_rows else big
    print(
        f"\nmeasured {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, about "
        f"{per:,} flows a box; the lab boxes' sshd and agents share these cores"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=250_000, help="flows per box (250000)")
    parser.add_argument(
        "--netstat-flows", type=int, default=20_000, help="table size for netstat-nat (20000)"
    )
    parser.add_argument("--boxes", type=int, default=20, help="boxes in the summary round (20)")
    parser.add_argument(
        "--fleet-boxes", type=int, default=4, help="boxes with full tables in the listing round (4)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per one-box tool (best kept)")
    parser.add_argument("--fleet-repeat", type=int, default=2, help="runs per fleet listing (2)")
    parser.add_argument(
        "--entry-timeout", type=int, default=1800, help="seconds a loaded entry lives (1800)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the full-table lab up")
    parser.add_argument(
        "--watch-intervals", type=int, default=8, help="intervals in the watch round (8)"
    )
    parser.add_argument(
        "--watch-churn", type=int, default=1000, help="entries loaded an interval (1000)"
    )
    args = parser.parse_args()
    if not 0 < args.netstat_flows < args.flows:
        parser.error("--netstat-flows must be above 0 and below --flows")

    def log(message: str) -> None:
        print(f"lab: {message}", file=sys.stderr)

    fleet = round_fleet_summary(args, log)
    fleet_rows, rows, facts = round_full_tables(args, log)
    report(args, fleet, fleet_rows, rows, facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
