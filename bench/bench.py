"""natfleet's benchmark: speed and memory against the reference tools, same machine, one run.

Run by hand (not by CI), as root:   sudo ./dev bench   (or: sudo python3 bench/bench.py)

It builds a one-box lab, fills the box's conntrack table with real UDP flows through its NAT
(bounded in count and time, inside the lab's namespaces only), and times, best of N runs:
``cat /proc/net/nf_conntrack``, ``conntrack -L``, ``natfleet summary --local``,
``natfleet local -n``, and netstat-nat on a smaller table (it is quadratic). It prints each
time, the ratios against ``conntrack -L``, and the peak RSS of natfleet's summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natfleet import lab  # noqa: E402
from natfleet.lab.bench import fill_udp  # noqa: E402

NATFLEET = [sys.executable, "-m", "natfleet"]
# runs a command and prints its wall time and peak RSS (KiB) as JSON
MEASURE = (
    "import json,resource,subprocess,sys,time;t=time.perf_counter();"
    "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
    "print(json.dumps({'seconds':time.perf_counter()-t,'rc':r.returncode,"
    "'rss_kib':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=250_000, help="table size (default 250000)")
    parser.add_argument(
        "--netstat-flows", type=int, default=20_000, help="table size for netstat-nat (20000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (best is kept)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()

    state = lab.up(boxes=1, aws=False, log=lambda m: print(f"lab: {m}", file=sys.stderr))
    box = state.boxes[0]
    ns = box.netns
    rows = []
    try:
        base = count(ns)
        fill_udp(state, box, args.netstat_flows, seconds_max=60)
        small = count(ns)
        print(f"table: {small} flows (netstat-nat round)", flush=True)
        netstat = measure(ns, ["netstat-nat", "-n"], 1, timeout=1800)
        ours_small = measure(ns, [*NATFLEET, "local", "-n"], args.repeat, timeout=600)
        rows.append(("netstat-nat -n", small, netstat))
        rows.append(("natfleet local -n", small, ours_small))

        fill_udp(state, box, args.flows - (small - base), seconds_max=120)
        big = count(ns)
        print(f"table: {big} flows (full round)", flush=True)
        tools = [
            ("cat /proc/net/nf_conntrack", ["cat", "/proc/net/nf_conntrack"]),
            ("conntrack -L", ["conntrack", "-L"]),
            ("natfleet summary --local", [*NATFLEET, "summary", "--local"]),
            ("natfleet local -n", [*NATFLEET, "local", "-n"]),
        ]
        for name, argv in tools:
            rows.append((name, big, measure(ns, argv, args.repeat, timeout=600)))
            print(f"  {name}: {rows[-1][2]['seconds']:.3f} s", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            lab.down(log=lambda m: print(f"lab: {m}", file=sys.stderr))

    reference = next(r[2]["seconds"] for r in rows if r[0] == "conntrack -L")
    print(f"\n{'tool':<28}{'flows':>9}{'seconds':>10}{'x conntrack -L':>16}{'peak RSS MB':>13}")
    for name, flows, got in rows:
        ratio = got["seconds"] / reference if flows == rows[-1][1] else float("nan")
        print(
            f"{name:<28}{flows:>9}{got['seconds']:>10.3f}{ratio:>16.2f}"
            f"{got['rss_kib'] / 1024:>13.1f}"
        )
    print(
        f"\nnetstat-nat -n / natfleet local -n at {rows[0][1]} flows: "
        f"{rows[0][2]['seconds'] / rows[1][2]['seconds']:.0f}x"
    )
    print(
        f"measured {time.strftime('%Y-%m-%d %H:%M')} on this machine; goals: summary <= 1.5x, "
        "listing <= 3x conntrack -L, summary peak RSS < 64 MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
