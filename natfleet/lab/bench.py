"""Filling a lab box's conntrack table fast, for benchmarks and "table full" tests.

Example:
    >>> state = load_state()
    >>> fill_udp(state, state.boxes[0], flows=200_000)   # about 2 s
    200000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from natfleet.errors import LabError
from natfleet.lab import topology as topo
from natfleet.lab.state import LabBox, LabState
from natfleet.lab.system import netns_argv, run, sysctl_in
from natfleet.lab.traffic import GENERATOR

PORTS_PER_SOCKET = 1000
FIRST_PORT = 10000


def _read_sysctl(netns: str, name: str) -> int:
    return int(run(netns_argv(netns, ["sysctl", "-n", name])).strip())


def fill_udp(state: LabState, box: LabBox, flows: int, seconds_max: float = 60) -> int:
    """Make about ``flows`` UDP conntrack entries through ``box``'s NAT; datagrams sent.

    The inside host sends one datagram per (socket, destination port) pair to 203.0.113.200,
    which the internet namespace drops, so every datagram is a new UNREPLIED SNAT entry. The
    box's UDP timeout is raised to the lab's lifetime (that namespace only). The global
    ``nf_conntrack_max`` is never changed: asking for more than fits raises LabError.
    """
    if flows <= 0:
        raise LabError(f"fill_udp needs a positive number of flows, not {flows}")
    table_max = _read_sysctl(box.netns, "net.netfilter.nf_conntrack_max")
    count = _read_sysctl(box.netns, "net.netfilter.nf_conntrack_count")
    if count + flows > table_max:
        raise LabError(
            f"{flows} flows do not fit in {box.name}'s conntrack table ({count} used of "
            f"nf_conntrack_max={table_max}, which is global and left alone): ask for fewer"
        )
    keep = state.lifetime + 600
    sysctl_in(box.netns, {"net.netfilter.nf_conntrack_udp_timeout": keep})
    plan = {
        "lifetime": int(seconds_max) + 1,
        "fill": {
            "src": box.inside_host_ip,
            "dst": topo.SINK_IP,
            "flows": flows,
            "ports": PORTS_PER_SOCKET,
            "first_port": FIRST_PORT,
            "seconds_max": seconds_max,
        },
    }
    plan_path = Path(state.state_dir) / "traffic" / f"fill-{box.name}.json"
    plan_path.write_text(json.dumps(plan))
    argv = netns_argv(box.inside_netns, [sys.executable, str(GENERATOR), str(plan_path)])
    try:
        out = run(argv, timeout=seconds_max + 10)
    finally:
        plan_path.unlink()
    try:
        return int(out.strip())
    except ValueError as exc:
        raise LabError(f"fill_udp: unexpected generator output {out!r}") from exc
