"""No lab process sends a DNS query, or any packet, past the lab.

Every lab namespace gets ``/etc/netns/<ns>/resolv.conf`` (an unreachable nameserver) and
``unreachable`` routes for the documentation ranges the lab does not route. Checked on files
in a temp folder (anywhere), on a throwaway namespace of this test's own (root; never an
``nflab-`` one), and on the running lab.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import pytest

from natfleet.lab import system, topology

FAST = 3.0  # seconds: a lookup that waited for a resolver would take resolv.conf's timeout+


def test_resolv_conf_names_an_address_the_lab_does_not_route():
    lines = topology.resolv_conf().splitlines()
    servers = [line.split()[1] for line in lines if line.startswith("nameserver")]
    assert servers == [topology.NO_RESOLVER]
    server = ipaddress.ip_address(servers[0])
    assert any(server in ipaddress.ip_network(cidr) for cidr in topology.UNROUTED)
    assert "options timeout:1 attempts:1" in lines


def test_nsswitch_keeps_everything_but_hosts():
    host = "passwd: files systemd\nhosts: files mdns4_minimal [NOTFOUND=return] resolve dns\n"
    assert topology.nsswitch_conf(host) == "passwd: files systemd\nhosts: files dns\n"
    assert topology.nsswitch_conf("group: files\n") == "group: files\nhosts: files dns\n"


def test_netns_etc_written_then_removed_with_nothing_else(tmp_path):
    folder = topology.write_netns_etc("nflab-box1", root=tmp_path)
    assert (folder / "resolv.conf").read_text() == topology.resolv_conf()
    topology.write_netns_etc("nflab-in1", root=tmp_path)
    (tmp_path / "nflab-in1" / "hosts").write_text("# someone else's\n")
    (tmp_path / "other-ns").mkdir()
    (tmp_path / "other-ns" / "resolv.conf").write_text("nameserver 192.0.2.1\n")

    removed = topology.remove_netns_etc("nflab-", root=tmp_path)

    assert removed == [str(tmp_path / "nflab-box1")]
    assert sorted(p.name for p in (tmp_path / "nflab-in1").iterdir()) == ["hosts"]
    assert (tmp_path / "other-ns" / "resolv.conf").exists()
    assert topology.remove_netns_etc("nflab-", root=tmp_path / "none") == []


def test_new_netns_writes_the_resolver_before_the_namespace_exists(tmp_path, monkeypatch):
    calls = []

    def run(argv, **_kwargs):
        calls.append((list(argv), (tmp_path / "nflab-srv" / "resolv.conf").exists()))
        return ""

    monkeypatch.setattr(topology, "run", run)
    topology.new_netns("nflab-srv", root=tmp_path)
    assert calls[0] == (["ip", "netns", "add", "nflab-srv"], True)
    routes = [argv for argv, _ in calls if argv[3:5] == ["route", "add"]]
    assert routes == [
        ["ip", "-n", "nflab-srv", "route", "add", "unreachable", cidr] for cidr in topology.UNROUTED
    ]


# --- real namespaces (root) ---------------------------------------------------------------


def _in(netns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        system.netns_argv(netns, list(argv)), capture_output=True, text=True, timeout=timeout
    )


def _lookups_fail_fast(netns: str) -> None:
    for name in ("natfleet-lab-test.example.com", "203.0.113.5", "198.18.1.10"):
        started = time.monotonic()
        done = _in(netns, "getent", "hosts", name)
        took = time.monotonic() - started
        assert done.returncode == 2, (name, done)  # 2: not found
        assert took < FAST, f"getent hosts {name} in {netns} took {took:.1f} s"


def _tx_packets(netns: str) -> int:
    out = _in(netns, "sh", "-c", "cat /sys/class/net/*/statistics/tx_packets").stdout
    return sum(int(n) for n in out.split())


@pytest.fixture
def own_netns():
    """A namespace of this test only (not ``nflab-``: ``lab down`` never sees it), with a
    default route, like a lab box, out of a veth whose peer (here too) drops what it gets."""
    name = f"nftest-dns-{os.getpid()}"
    topology.new_netns(name)
    try:
        ip = ["ip", "-n", name]
        system.run([*ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        system.run([*ip, "addr", "add", "203.0.113.250/24", "dev", "v0"])
        for dev in ("v0", "v1"):
            system.run([*ip, "link", "set", dev, "arp", "off", "up"])
        system.run([*ip, "route", "add", "default", "via", "203.0.113.1"])
        yield name
    finally:
        system.run(["ip", "netns", "delete", name])
        topology.remove_netns_etc(name)


SEND_ONE = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', (%r, 9))"


@pytest.mark.lab
def test_a_lookup_in_a_new_namespace_fails_at_once_and_sends_nothing(own_netns):
    assert _in(own_netns, "cat", "/etc/resolv.conf").stdout == topology.resolv_conf()
    before = _tx_packets(own_netns)
    _lookups_fail_fast(own_netns)
    assert _tx_packets(own_netns) == before  # the unreachable route refused every query
    assert _in(own_netns, sys.executable, "-c", SEND_ONE % "203.0.113.7").returncode == 0
    assert _tx_packets(own_netns) > before  # (what a query sent would have done)
    refused = _in(own_netns, sys.executable, "-c", SEND_ONE % "198.18.77.1")
    assert "No route to host" in refused.stderr  # an unrouted lab range fails at once
    refused = _in(own_netns, "ip", "route", "get", topology.NO_RESOLVER)
    assert refused.returncode != 0
    assert "no route to host" in refused.stderr.lower()  # EHOSTUNREACH: the unreachable route
    topology.remove_netns_etc(own_netns)
    assert not (topology.NETNS_ETC / own_netns).exists()


@pytest.mark.lab
def test_every_lab_namespace_has_its_resolver_and_unreachable_routes(lab):
    names = [topology.INET_NS, topology.SRV_NS]
    names += [ns for box in lab.boxes for ns in (box.netns, box.inside_netns)]
    for netns in names:
        resolv = topology.NETNS_ETC / netns / "resolv.conf"
        assert resolv.read_text() == topology.resolv_conf(), netns
        routes = _in(netns, "ip", "route", "show", "type", "unreachable").stdout.split()
        assert all(cidr in routes for cidr in topology.UNROUTED), (netns, routes)
    box = lab.boxes[0]
    for netns in (box.netns, box.inside_netns):
        _lookups_fail_fast(netns)
    agent = _in(box.netns, "python3", "-c", "import socket; print(socket.getfqdn('203.0.113.5'))")
    assert agent.stdout.strip() == "203.0.113.5"  # what the agent's -n-less lookup gets
    flows = _in(box.netns, "conntrack", "-L", "-d", topology.NO_RESOLVER).stdout
    assert topology.NO_RESOLVER not in flows


def test_down_removes_the_lab_files_in_etc_netns_only(tmp_path, monkeypatch):
    import natfleet.lab

    monkeypatch.setattr(topology, "NETNS_ETC", tmp_path)
    for netns in ("nflab-box1", "nflab-srv", "nftest-mine"):
        topology.write_netns_etc(netns, root=tmp_path)
    monkeypatch.setattr(natfleet.lab, "check_can_run", lambda _action: None)
    monkeypatch.setattr(natfleet.lab, "netns_list", lambda prefix: [])
    monkeypatch.setattr(topology, "mgmt_bridge_exists", lambda: False)
    monkeypatch.setattr(natfleet.lab.login, "remove", lambda folder, log: None)  # (a real lab's)
    said: list[str] = []
    natfleet.lab.down(str(tmp_path / "no-lab"), log=said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nftest-mine"]
    assert said == [f"removed {tmp_path / 'nflab-box1'}", f"removed {tmp_path / 'nflab-srv'}"]
    assert (tmp_path / "nftest-mine" / "resolv.conf").exists()
