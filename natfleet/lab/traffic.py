"""The lab's traffic: one plan per namespace, run by ``trafficgen.py`` with a hard lifetime.

What each box's conntrack table then holds (box 1):

- SNAT tcp ESTABLISHED 198.18.1.10 -> 203.0.113.5:443 (held open), TIME_WAIT 198.18.1.11 ->
  203.0.113.5:80 (closed by both), CLOSE_WAIT 198.18.1.12 -> 203.0.113.5:80 (half-closed)
- SNAT udp 203.0.113.53:53 answered, 203.0.113.53:123 unanswered; SNAT icmp echo 203.0.113.9
- DNAT 198.51.100.1 -> 198.51.100.11:8080 => 198.18.1.10:80, from nflab-inet
- routed 198.51.100.1 -> 198.18.1.10:80, from nflab-inet (no NAT)
- local 198.18.1.10 -> 198.18.1.1:9000, plus every SSH session to 198.19.255.11:22

Example:
    >>> plans = traffic_plans([make_box(1)], Path("/run/natfleet-lab"), 7200)
    >>> sorted(plans)
    ['nflab-box1', 'nflab-in1', 'nflab-inet', 'nflab-srv']
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from natfleet.errors import LabError
from natfleet.lab import topology as topo
from natfleet.lab.state import LabBox
from natfleet.lab.system import netns_argv, spawn, wait_until

GENERATOR = Path(__file__).with_name("trafficgen.py")
Plan = dict[str, Any]


def _inside_plan(box: LabBox) -> Plan:
    src10, src11, src12 = topo.inside_sources(box)
    return {
        "listen_tcp": [[box.inside_host_ip, topo.INSIDE_PORT]],
        "tcp_hold": [
            [src10, topo.WEB_IP, 443, 2],
            [src11, topo.WEB_IP, 443, 1],
            [src10, box.inside_ip, topo.LOCAL_PORT, 1],
        ],
        "tcp_close": [[src11, topo.WEB_IP, 80, 2]],
        "tcp_half": [[src12, topo.WEB_IP, 80, 1]],
        "udp": [  # port 123 never answers: UNREPLIED entries
            [src10, topo.DNS_IP, 53, 3],
            [src12, topo.DNS_IP, 53, 1],
            [src11, topo.DNS_IP, 123, 2],
        ],
        "icmp": [[src10, topo.PING_IP, 2], [src11, topo.PING_IP, 1]],
    }


def traffic_plans(boxes: Sequence[LabBox], state_dir: Path, lifetime: int) -> dict[str, Plan]:
    """The plan of every namespace that runs a generator, keyed by namespace."""
    ready = state_dir / "ready"
    plans: dict[str, Plan] = {
        topo.SRV_NS: {
            "listen_tcp": [[topo.WEB_IP, 443], [topo.WEB_IP, 80]],
            "listen_udp": [[topo.DNS_IP, 53, True], [topo.DNS_IP, 123, False]],
        },
        topo.INET_NS: {
            "tcp_hold": [[topo.INET_IP, box.public_ip, topo.DNAT_PORT, 1] for box in boxes]
            + [[topo.INET_IP, box.inside_host_ip, topo.INSIDE_PORT, 1] for box in boxes],
        },
    }
    for box in boxes:
        plans[box.netns] = {"listen_tcp": [[box.inside_ip, topo.LOCAL_PORT]]}
        plans[box.inside_netns] = _inside_plan(box)
    for netns, plan in plans.items():
        plan["lifetime"] = lifetime
        plan["ready"] = str(ready / netns)
    return plans


def _start(netns: str, plan: Plan, state_dir: Path, lifetime: int) -> int:
    plan_path = state_dir / "traffic" / f"{netns}.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    argv = [sys.executable, str(GENERATOR), str(plan_path)]
    return spawn(netns, argv, state_dir / "traffic" / f"{netns}.log", state_dir, lifetime)


def _wait_ready(netnames: Sequence[str], state_dir: Path, seconds: float) -> None:
    waiting = wait_until(netnames, lambda ns: (state_dir / "ready" / ns).exists(), seconds)
    if waiting:
        logs = []
        for ns in waiting:
            log = state_dir / "traffic" / f"{ns}.log"
            tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
            logs.append(f"{ns}: {' | '.join(tail) or 'no output'}")
        raise LabError(f"lab traffic did not start within {seconds:.0f} s: " + "; ".join(logs))


def start_traffic(
    boxes: Sequence[LabBox], state_dir: Path, lifetime: int, seconds: float = 15
) -> dict[str, int]:
    """Start servers, then inside hosts, then the internet clients; returns pids by namespace.

    Each stage waits for the previous one's ready files, so no client meets a closed port.
    """
    (state_dir / "ready").mkdir(exist_ok=True)
    (state_dir / "traffic").mkdir(exist_ok=True)
    plans = traffic_plans(boxes, state_dir, lifetime)
    stages = [
        [topo.SRV_NS, *(box.netns for box in boxes)],
        [box.inside_netns for box in boxes],
        [topo.INET_NS],
    ]
    pids = {}
    for stage in stages:
        for netns in stage:
            pids[netns] = _start(netns, plans[netns], state_dir, lifetime)
        _wait_ready(stage, state_dir, seconds)
    return pids


# One TCP client, stdlib only, bounded: waits DELAY s, connects (from the inside host's
# address SRC), tells the lab's web server to close when it does ("close": TIME_WAIT), holds
# the connection HOLD s, closes its side and reads until the server has closed too (so the
# close is a FIN, not a reset), and is gone 1 s later; at most 5 s for each network step.
SESSION_CLIENT = (
    "import socket,sys,time\n"
    "src,dst,port,delay,hold=sys.argv[1:6]\n"
    "time.sleep(min(float(delay),30))\n"
    "s=socket.create_connection((dst,int(port)),timeout=5,source_address=(src,0))\n"
    "s.sendall(b'close\\n');time.sleep(min(float(hold),30));s.shutdown(socket.SHUT_WR)\n"
    "while s.recv(4096):pass\n"
    "s.close();time.sleep(1)\n"
)


def tcp_session(box: LabBox, delay: float = 1.0, hold: float = 3.0) -> subprocess.Popen:
    """Start one TCP connection through ``box``'s NAT, from its inside host to the web server
    (``203.0.113.5:80``): it opens after ``delay`` s and is closed by the client after
    ``hold`` s, so its conntrack entry walks SYN_SENT, ESTABLISHED, FIN_WAIT, TIME_WAIT while
    ``natfleet watch`` runs. The caller waits for the process (it ends by itself in at most
    ``delay + hold + 11`` s) and ends it by its PID if it must.

    Example (what ``natfleet demo`` does around its watch):
        >>> client = tcp_session(state.boxes[0])
        >>> subprocess.run(["natfleet", "watch", "-p", "tcp", "--events", "--count", "4"])
        >>> client.wait(timeout=30)
        0
    """
    src = topo.inside_sources(box)[-1]
    argv = [sys.executable, "-I", "-c", SESSION_CLIENT, src, topo.WEB_IP, "80"]
    argv += [str(delay), str(hold)]
    return subprocess.Popen(
        netns_argv(box.inside_netns, argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
