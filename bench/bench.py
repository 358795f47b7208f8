"""natfleet's benchmark: speed and memory against the reference tools, same machine, one run.

Run by hand (not by CI), as root: sudo ./dev bench (set up: sudo .venv/bin/python bench/bench.py)

It builds a one-box lab, fills the box's conntrack table with real UDP flows through its NAT
(bounded in count and time, inside the lab's namespaces only), and times, best of N runs:
``cat /proc/net/nf_conntrack``, ``conntrack -L``, ``natfleet summary --local``,
``natfleet local -n``, and netstat-nat on a smaller table (it is quadratic). It prints each
time, the ratios against ``conntrack -L``, and the peak RSS of natfleet's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natfleet import lab  # noqa: E402
from natfleet.lab.bench import fill_udp  # noqa: E402

NATFLEET = [sys.executable, "-m", "natfleet"]
# runs a command under GNU time (its peak RSS, in KiB, is the command's own: a Python
# wrapper's fork would count the wrapper too) and prints wall time and RSS as JSON
MEASURE = (
    "import json,os,subprocess,sys,tempfile,time;f=tempfile.mktemp();t=time.perf_counter();"
    "r=subprocess.run(['/usr/bin/time','-f','%M','-o',f]+sys.argv[1:],"
    "stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);s=time.perf_counter()-t;"
    "m=int(open(f).read().split()[-1]);os.unlink(f);"
    "print(json.dumps({'seconds':s,'rc':r.returncode,'rss_kib':m}))"
)


def measure(netns: str, argv: list[str], repeat: int, timeout: float) -> dict:
    """Best wall time and largest peak RSS of ``argv`` run ``repeat`` times inside ``netns``."""
    best = None
    for _ in range(repeat):
        done = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", MEASURE, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        got = json.loads(done.stdout)
        if got["rc"] != 0:
            raise SystemExit(f"bench: {' '.join(argv)} exited {got['rc']}")
        if best is None or got["seconds"] < best["seconds"]:
            best = {**got, "rss_kib": max(got["rss_kib"], (best or got)["rss_kib"])}
    return best


def count(netns: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-n", "net.netfilter.nf_conntrack_count"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


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
    for _ in range(repeat):
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    "ssh",
                    "-F",
                    env["NATFLEET_SSH_CONFIG"],
                    "-o",
                    "BatchMode=yes",
                    host,
                    "python3",
                    "-c",
                    "pass",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            for host in hosts
        ]
        if any(p.wait(timeout=120) for p in procs):
            raise SystemExit("bench: ssh to a lab box failed")
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=250_000, help="table size (default 250000)")
    parser.add_argument(
        "--netstat-flows", type=int, default=20_000, help="table size for netstat-nat (20000)"
    )
    parser.add_argument("--boxes", type=int, default=20, help="fleet size for the SSH round (20)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per tool (best is kept)")
    parser.add_argument("--keep", action="store_true", help="leave the one-box lab up")
    args = parser.parse_args()

    log = lambda m: print(f"lab: {m}", file=sys.stderr)  # noqa: E731
    fleet = {}
    # round 1: the fleet over SSH (its background traffic stays out of round 2)
    state = lab.up(boxes=args.boxes, aws=False, log=log)
    env = {**os.environ, **state.env()}
    hosts = [b.name for b in state.boxes]
    try:
        fleet["one"], small_boxes = fleet_summary(env, hosts[:1], args.repeat)
        fleet["all"], _ = fleet_summary(env, hosts, args.repeat)
        fleet["bare_one"] = bare_ssh(env, hosts[:1], args.repeat)
        fleet["bare_all"] = bare_ssh(env, hosts, args.repeat)
        fleet["small_flows"] = small_boxes[0]["summary"]["flows"]
        fleet["small_bytes"] = small_boxes[0]["transport"]["bytes_received"]
    finally:
        lab.down(log=log)

    # round 2: one box, its table filled with real flows through its NAT
    state = lab.up(boxes=1, aws=False, log=log)
    env = {**os.environ, **state.env()}
    box = state.boxes[0]
    ns = box.netns
    rows = []
    try:
        base = count(ns)
        fill_udp(state, box, args.netstat_flows, seconds_max=60)
        small = count(ns)
        print(f"table: {small} flows (netstat-nat round)", file=sys.stderr, flush=True)
        netstat = measure(ns, ["netstat-nat", "-n"], 1, timeout=1800)
        ours_small = measure(ns, [*NATFLEET, "local", "-n"], args.repeat, timeout=600)
        rows.append(("netstat-nat -n", small, netstat))
        rows.append(("natfleet local -n", small, ours_small))

        fill_udp(state, box, args.flows - (small - base), seconds_max=120)
        big = count(ns)
        print(f"table: {big} flows (full round)", file=sys.stderr, flush=True)
        tools = [
            ("cat /proc/net/nf_conntrack", ["cat", "/proc/net/nf_conntrack"]),
            ("conntrack -L", ["conntrack", "-L"]),
            ("natfleet summary --local", [*NATFLEET, "summary", "--local"]),
            ("natfleet summary --local --jobs 1", [*NATFLEET, "summary", "--local", "--jobs", "1"]),
            ("natfleet local -n", [*NATFLEET, "local", "-n"]),
        ]
        for name, argv in tools:
            rows.append((name, big, measure(ns, argv, args.repeat, timeout=600)))
            print(f"  {name}: {rows[-1][2]['seconds']:.3f} s", file=sys.stderr, flush=True)
        _, big_boxes = fleet_summary(env, [box.name], 1)
        fleet["big_flows"] = big_boxes[0]["summary"]["flows"]
        fleet["big_bytes"] = big_boxes[0]["transport"]["bytes_received"]
    finally:
        if not args.keep:
            lab.down(log=log)

    reference = next(r[2]["seconds"] for r in rows if r[0] == "conntrack -L")
    print(f"{'tool':<36}{'flows':>9}{'seconds':>10}{'x conntrack -L':>16}{'peak RSS MB':>13}")
    for name, flows, got in rows:
        ratio = f"{got['seconds'] / reference:.2f}" if flows == rows[-1][1] else "-"
        print(
            f"{name:<36}{flows:>9}{got['seconds']:>10.3f}{ratio:>16}{got['rss_kib'] / 1024:>13.1f}"
        )
    print(
        f"\nnetstat-nat -n takes {rows[0][2]['seconds'] / rows[1][2]['seconds']:.0f}x as long as "
        f"natfleet local -n at {rows[0][1]} flows"
    )
    print(
        f"natfleet summary over SSH: 1 box {fleet['one']:.2f} s, {args.boxes} boxes "
        f"{fleet['all']:.2f} s ({fleet['all'] / fleet['one']:.2f}x)"
    )
    print(
        f"bare OpenSSH 'python3 -c pass': 1 box {fleet['bare_one']:.2f} s, {args.boxes} boxes "
        f"{fleet['bare_all']:.2f} s ({fleet['bare_all'] / fleet['bare_one']:.2f}x): every lab "
        f"box's sshd and python share these {os.cpu_count()} cores"
    )
    print(
        f"bytes back per box in summary mode: {fleet['small_bytes']} at {fleet['small_flows']} "
        f"flows, {fleet['big_bytes']} at {fleet['big_flows']} flows"
    )
    print(
        f"measured {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores; goals: summary "
        "<= 1.5x and listing <= 3x conntrack -L, summary peak RSS < 64 MB, 20 boxes <= 1.5x "
        "one box, < 16 KB back per box"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
