"""Filling a lab box's conntrack table fast, for benchmarks and "table full" tests.

Two ways: :func:`fill_udp` sends real datagrams through a box's NAT; :func:`load_table`
loads exact entries with ``conntrack -R`` (conntrack's save format, one entry a line), about
2 s for 250,000, into any namespace, with no traffic at all.

Example:
    >>> state = load_state()
    >>> fill_udp(state, state.boxes[0], flows=200_000)   # about 2 s
    200000
    >>> with conntrack_max_at_least(300_000):
    ...     load_table("nflab-box1", 250_000, ["198.18.1.10"], "198.51.100.11")
    250000
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
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


CONNTRACK_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"  # global: every namespace's limit
# (protocol, state flags, destination, port) of the table's kinds of flow; a flow's NAT port
# is its source port, unique within one kind, so every reply tuple is unique too
ENTRY_KINDS = (
    ("tcp", "SEEN_REPLY,ASSURED", topo.WEB_IP, 443),
    ("udp", "SEEN_REPLY", topo.DNS_IP, 53),
    ("tcp", "SEEN_REPLY,ASSURED", topo.WEB_IP, 80),
    ("udp", "UNREPLIED", topo.DNS_IP, 123),
    ("tcp", "SEEN_REPLY,ASSURED", topo.WEB_IP, 8443),
)
PORTS_PER_KIND = 64000  # source ports 1024-65023
ENTRY_TIMEOUT = 900  # seconds an entry lives unless the caller says otherwise


def table_entries(
    flows: int, inside: Sequence[str], nat_ip: str, timeout: int = ENTRY_TIMEOUT, start: int = 0
) -> Iterator[str]:
    """``flows`` distinct source-NAT entries in conntrack's save format (``conntrack -R``):
    TCP ESTABLISHED to 443, 80 and 8443 and UDP to 53 (replied) and 123 (unreplied), from
    the ``inside`` addresses in turn, translated to ``nat_ip`` keeping the source port.
    ``start`` skips that many: entries ``start`` to ``start + flows`` of the same table.

    >>> next(table_entries(1, ["198.18.1.10"], "198.51.100.11", timeout=60))
    '-A -t 60 -u SEEN_REPLY,ASSURED -p tcp --state ESTABLISHED -s 198.18.1.10 -d 203.0.113.5 \
--sport 1024 --dport 443 -r 203.0.113.5 -q 198.51.100.11 --reply-port-src 443 \
--reply-port-dst 1024'
    """
    most = len(ENTRY_KINDS) * PORTS_PER_KIND
    if not 0 < flows <= most - start or start < 0 or not inside:
        raise LabError(f"table_entries makes 1 to {most} flows from one or more addresses")
    for i in range(start, start + flows):
        proto, status, dst, dport = ENTRY_KINDS[i % len(ENTRY_KINDS)]
        slot = i // len(ENTRY_KINDS)
        src, port = inside[slot % len(inside)], 1024 + slot
        state = " --state ESTABLISHED" if proto == "tcp" else ""
        yield (
            f"-A -t {timeout} -u {status} -p {proto}{state} -s {src} -d {dst} --sport {port} "
            f"--dport {dport} -r {dst} -q {nat_ip} --reply-port-src {dport} --reply-port-dst {port}"
        )


def table_sources(box: LabBox, count: int = 10) -> list[str]:
    """Inside addresses for loaded entries that no live flow of the lab uses (its inside
    host is .10-.12), so an entry's original tuple is never one already in the table.

    >>> table_sources(topo.make_box(1), 2)
    ['198.18.1.100', '198.18.1.101']
    """
    base = box.inside_host_ip.rsplit(".", 1)[0]
    return [f"{base}.{100 + n}" for n in range(count)]


def table_nat_ip(box: LabBox) -> str:
    """The NAT address of loaded entries: not the box's public address, whose live flows
    (MASQUERADE keeps their ephemeral ports) would meet the same reply tuple.

    >>> table_nat_ip(topo.make_box(1))
    '198.51.100.201'
    """
    return f"198.51.100.{200 + topo.box_index(box)}"


def conntrack_count(netns: str) -> int:
    """The number of entries in a namespace's table (``conntrack -C``)."""
    return int(run(netns_argv(netns, ["conntrack", "-C"])).strip())


def load_table(
    netns: str,
    flows: int,
    inside: Sequence[str],
    nat_ip: str,
    timeout: int = ENTRY_TIMEOUT,
    start: int = 0,
    seconds_max: float = 120,
) -> int:
    """Load :func:`table_entries` into ``netns`` with ``conntrack -R`` (``start``: the
    entries after the first ``start``, to grow a table loaded before); the table's entries
    afterwards. Raises LabError when fewer than ``flows`` new entries are there (conntrack
    -R says nothing of an entry it could not add: the table full, an entry already there:
    give ``inside`` addresses the lab's own traffic does not use, see :func:`table_sources`).
    """
    before = nat_entries(netns, nat_ip)
    with tempfile.NamedTemporaryFile("w", prefix="natfleet-table-", suffix=".save") as out:
        for line in table_entries(flows, inside, nat_ip, timeout, start):
            out.write(line + "\n")
        out.flush()
        run(netns_argv(netns, ["conntrack", "-R", out.name]), timeout=seconds_max)
    loaded = nat_entries(netns, nat_ip) - before
    if loaded < flows:
        raise LabError(
            f"conntrack -R loaded {loaded} of {flows} entries into {netns} "
            f"(nf_conntrack_max {read_conntrack_max()}; entries already there are skipped)"
        )
    return conntrack_count(netns)


def nat_entries(netns: str, nat_ip: str) -> int:
    """The entries of ``netns`` translated to ``nat_ip`` (``conntrack -L -q``: reply
    destination): what a load added, whatever the table's other flows did meanwhile (the
    lab's TIME_WAIT entries expire while a big table loads)."""
    out = run(netns_argv(netns, ["conntrack", "-L", "-q", nat_ip]), timeout=120)
    return sum(1 for line in out.splitlines() if line.strip())


def read_conntrack_max() -> int:
    return int(Path(CONNTRACK_MAX).read_text().strip())


@contextlib.contextmanager
def conntrack_max_at_least(needed: int, path: str = CONNTRACK_MAX) -> Iterator[int]:
    """Raise the global ``nf_conntrack_max`` to at least ``needed`` for the block, then put
    back what it was (also on errors); the value in force."""
    before = int(Path(path).read_text().strip())
    if before >= needed:
        yield before
        return
    Path(path).write_text(f"{needed}\n")
    try:
        yield needed
    finally:
        Path(path).write_text(f"{before}\n")
