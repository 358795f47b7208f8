"""The lab's namespaces, links, addresses, routes, NAT rules and conntrack timeouts.

Layout (box i = 1..N; documentation ranges only)::

    root ns: bridge nflab-mgmt 198.19.255.1/24 --veth nflab-m{i}/mgmt0-- nflab-box{i} .(10+i)
    nflab-in{i}  eth0 198.18.{i}.10,.11,.12/24 --veth-- lan0 198.18.{i}.1/24   nflab-box{i}
    nflab-box{i} wan0 198.51.100.(10+i)/24 --veth b{i}-- bridge br0 198.51.100.1/24 nflab-inet
    nflab-inet   srv0 203.0.113.1/24 --veth-- eth0 203.0.113.5,.53,.9/24         nflab-srv

Each box: ip_forward=1, MASQUERADE of 198.18.{i}.0/24 out of wan0, DNAT
198.51.100.(10+i):8080 -> 198.18.{i}.10:80. nflab-inet routes 198.18.{i}.0/24 via the box
(a routed, non-NAT path) and blackholes 203.0.113.200 (the sink for table fills).

No lab process reaches past the lab, not even for DNS: every namespace has ``unreachable``
routes for 192.0.2.0/24 and 198.18.0.0/15 (the lab's own, more specific routes still win), and
its own ``/etc/netns/<ns>/resolv.conf`` naming 192.0.2.53, so a lookup fails at once without
sending a packet (``ip netns exec`` bind-mounts those files over /etc; ``lab down`` removes them).

Example:
    >>> make_box(2).public_ip
    '198.51.100.12'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from natfleet.lab.state import LabBox
from natfleet.lab.system import kill_netns_processes, netns_argv, netns_list, run, sysctl_in

PREFIX = "nflab-"
MGMT_BRIDGE = "nflab-mgmt"
MGMT_GATEWAY = "198.19.255.1"
INET_NS = "nflab-inet"
SRV_NS = "nflab-srv"
INET_IP = "198.51.100.1"
SRV_GATEWAY = "203.0.113.1"
WEB_IP = "203.0.113.5"  # TCP 443 and 80
DNS_IP = "203.0.113.53"  # UDP 53 answers, UDP 123 never answers
PING_IP = "203.0.113.9"  # ICMP echo (the kernel answers)
SINK_IP = "203.0.113.200"  # blackholed in nflab-inet: fill_udp's destination
SERVER_IPS = (WEB_IP, DNS_IP, PING_IP)
DNAT_PORT = 8080
INSIDE_PORT = 80
LOCAL_PORT = 9000  # a listener on each box's inside address
UNROUTED = ("192.0.2.0/24", "198.18.0.0/15")  # unreachable in every lab namespace, but for
# the lab's more specific routes (198.18.{i}.0/24, the mgmt 198.19.255.0/24)
NO_RESOLVER = "192.0.2.53"  # the lab's nameserver: unreachable, so no query leaves the lab
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts NETNS_ETC/NS/* over /etc/*
ETC_FILES = ("resolv.conf", "nsswitch.conf")  # what the lab writes there, and down removes


def make_box(i: int) -> LabBox:
    """The names and addresses of box ``i`` (1-based)."""
    return LabBox(
        name=f"nflab-box{i}",
        netns=f"nflab-box{i}",
        mgmt_ip=f"198.19.255.{10 + i}",
        public_ip=f"198.51.100.{10 + i}",
        inside_ip=f"198.18.{i}.1",
        inside_netns=f"nflab-in{i}",
        inside_host_ip=f"198.18.{i}.10",
    )


def box_index(box: LabBox) -> int:
    """Box number from its name: ``nflab-box3`` -> 3."""
    return int(box.name.rsplit("box", 1)[1])


def inside_sources(box: LabBox) -> list[str]:
    """The inside host's addresses: ``198.18.1.10``, ``.11``, ``.12``."""
    base = box.inside_host_ip.rsplit(".", 1)[0]
    return [f"{base}.{n}" for n in (10, 11, 12)]


def conntrack_timeouts(lifetime: int) -> dict[str, int]:
    """Timeouts that keep closing TCP, UDP and ICMP entries visible for the lab's lifetime."""
    keep = lifetime + 600
    names: tuple[str, ...] = ("tcp_timeout_time_wait", "tcp_timeout_close_wait")
    names += ("tcp_timeout_fin_wait", "tcp_timeout_last_ack")
    names += ("udp_timeout", "udp_timeout_stream", "icmp_timeout")
    values = {f"net.netfilter.nf_conntrack_{name}": keep for name in names}
    values["net.netfilter.nf_conntrack_tcp_timeout_established"] = max(432000, keep)
    return values


def mgmt_bridge_exists() -> bool:
    """True when the root namespace has the lab's management bridge."""
    return Path(f"/sys/class/net/{MGMT_BRIDGE}").exists()


def _ip(*args: str) -> None:
    run(["ip", *args])


def resolv_conf() -> str:
    """A lab namespace's ``/etc/resolv.conf``: one unreachable nameserver, one short try.

    Example: ``resolv_conf().splitlines()[1]`` -> ``'nameserver 192.0.2.53'``
    """
    return (
        "# natfleet lab: no DNS server is reachable from here, so a lookup fails at once\n"
        f"nameserver {NO_RESOLVER}\n"
        "options timeout:1 attempts:1\n"
    )


def nsswitch_conf(host: str) -> str:
    """The machine's nsswitch.conf with ``hosts: files dns``: no lookup through a resolver of
    the root namespace (systemd-resolved's socket, mDNS).

    Example: ``nsswitch_conf("passwd: files\\nhosts: files resolve dns\\n")`` ->
    ``'passwd: files\\nhosts: files dns\\n'``
    """
    lines = [line for line in host.splitlines() if line.split(":")[0].strip() != "hosts"]
    return "\n".join([*lines, "hosts: files dns"]) + "\n"


def write_netns_etc(name: str, root: Optional[Path] = None) -> Path:
    """Write ``<root or NETNS_ETC>/<name>/resolv.conf`` and ``nsswitch.conf`` (before any
    process starts in the namespace: ``ip netns exec`` mounts them at each start); returns the
    folder."""
    folder = (root or NETNS_ETC) / name
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    (folder / "resolv.conf").write_text(resolv_conf())
    host = Path("/etc/nsswitch.conf")
    if host.is_file():  # (ip netns exec mounts only over files /etc has)
        (folder / "nsswitch.conf").write_text(nsswitch_conf(host.read_text()))
    return folder


def remove_netns_etc(prefix: str = PREFIX, root: Optional[Path] = None) -> list[str]:
    """Remove the files :func:`write_netns_etc` wrote for namespaces named ``prefix*``, and
    their folders when nothing else is in them; returns the folders removed."""
    root = root or NETNS_ETC
    removed = []
    for folder in sorted(root.glob(f"{prefix}*")) if root.is_dir() else []:
        for name in ETC_FILES:
            (folder / name).unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            removed.append(str(folder))
    if removed and not any(root.iterdir()):
        root.rmdir()  # /etc/netns was most likely the lab's too
    return removed


def remove_bridged(prefix: str, bridge: str, names: Iterable[str], veths: Iterable[str]) -> None:
    """Remove a lab of namespaces on one bridge: the root ends of ``veths`` first (a
    namespace's links otherwise go away only when the kernel gets round to it, after ``ip
    netns del`` returned), then every process still in each of ``names`` and the namespace,
    the ``/etc/netns`` files of ``prefix*`` (:func:`remove_netns_etc`) and ``bridge``."""
    for veth in veths:
        if Path(f"/sys/class/net/{veth}").exists():
            _ip("link", "del", veth)
    present = set(netns_list(prefix))
    for name in names:
        if name in present:
            kill_netns_processes(name)
            _ip("netns", "del", name)
    remove_netns_etc(prefix)
    if Path(f"/sys/class/net/{bridge}").exists():
        _ip("link", "del", bridge)


def new_netns(name: str, root: Optional[Path] = None) -> None:
    """A lab namespace: its resolver files, ``lo`` up, the :data:`UNROUTED` ranges unreachable.

    Example: ``new_netns("nflab-srv")``, then ``ip netns exec nflab-srv getent hosts
    example.com`` fails at once (exit 2) and sends nothing.
    """
    write_netns_etc(name, root)
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    for cidr in UNROUTED:
        _ip("-n", name, "route", "add", "unreachable", cidr)


def _addrs(netns: str, dev: str, cidrs: Sequence[str]) -> None:
    for cidr in cidrs:
        _ip("-n", netns, "addr", "add", cidr, "dev", dev)
    _ip("-n", netns, "link", "set", dev, "up")


def build_shared() -> None:
    """The management bridge (root ns), the internet and the outside servers."""
    _ip("link", "add", MGMT_BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{MGMT_GATEWAY}/24", "dev", MGMT_BRIDGE)
    _ip("link", "set", MGMT_BRIDGE, "up")
    new_netns(INET_NS)
    new_netns(SRV_NS)
    _ip("-n", INET_NS, "link", "add", "br0", "type", "bridge")
    _addrs(INET_NS, "br0", [f"{INET_IP}/24"])
    _ip(
        "-n",
        INET_NS,
        "link",
        "add",
        "srv0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        SRV_NS,
    )
    _addrs(INET_NS, "srv0", [f"{SRV_GATEWAY}/24"])
    _addrs(SRV_NS, "eth0", [f"{ip}/24" for ip in SERVER_IPS])
    _ip("-n", SRV_NS, "route", "add", "default", "via", SRV_GATEWAY)
    _ip("-n", INET_NS, "route", "add", "blackhole", f"{SINK_IP}/32")
    sysctl_in(INET_NS, {"net.ipv4.ip_forward": 1})


def nat_rules(box: LabBox) -> str:
    """The box's ``iptables-restore`` input: MASQUERADE out of wan0 and the DNAT forward."""
    lan = box.inside_ip.rsplit(".", 1)[0] + ".0/24"
    return (
        "*nat\n"
        f"-A PREROUTING -i wan0 -d {box.public_ip}/32 -p tcp --dport {DNAT_PORT} "
        f"-j DNAT --to-destination {box.inside_host_ip}:{INSIDE_PORT}\n"
        f"-A POSTROUTING -o wan0 -s {lan} -j MASQUERADE\n"
        "COMMIT\n"
    )


def build_box(box: LabBox, lifetime: int) -> None:
    """Box ``box``: its namespaces, three links, routes, NAT rules and conntrack timeouts."""
    i = box_index(box)
    ns, inside = box.netns, box.inside_netns
    new_netns(ns)
    new_netns(inside)
    root_veth = f"nflab-m{i}"
    _ip("link", "add", root_veth, "type", "veth", "peer", "name", "mgmt0", "netns", ns)
    _ip("link", "set", root_veth, "master", MGMT_BRIDGE, "up")
    _addrs(ns, "mgmt0", [f"{box.mgmt_ip}/24"])
    _ip("-n", ns, "link", "add", "wan0", "type", "veth", "peer", "name", f"b{i}", "netns", INET_NS)
    _ip("-n", INET_NS, "link", "set", f"b{i}", "master", "br0", "up")
    _addrs(ns, "wan0", [f"{box.public_ip}/24"])
    _ip("-n", ns, "route", "add", "default", "via", INET_IP)
    _ip("-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", inside)
    _addrs(ns, "lan0", [f"{box.inside_ip}/24"])
    _addrs(inside, "eth0", [f"{ip}/24" for ip in inside_sources(box)])
    _ip("-n", inside, "route", "add", "default", "via", box.inside_ip)
    lan = box.inside_ip.rsplit(".", 1)[0] + ".0/24"
    _ip("-n", INET_NS, "route", "add", lan, "via", box.public_ip)
    # The NAT rules switch conntrack on in this namespace before any traffic.
    run(netns_argv(ns, ["iptables-restore"]), input=nat_rules(box))
    sysctl_in(ns, {"net.ipv4.ip_forward": 1, **conntrack_timeouts(lifetime)})
