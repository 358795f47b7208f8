"""natfleet against netstat-nat on the same kernel table, row for row.

A throwaway network namespace gets an exact table from ``conntrack -I`` (no traffic at all),
and both tools read it. Where netstat-nat is right (IPv4, address-changing NAT, plain TCP
states) the rows must agree; each place natfleet deliberately differs has its own test.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

pytestmark = pytest.mark.lab

NS = "nftest-cmp"
BOX = "198.51.100.1"  # the NAT box's public address (on a veth inside the namespace)
INSIDE = "198.18.0.1"  # and its inside address
PORT_ONLY_SOURCE = "198.18.0.11:42000"  # the REDIRECT-like flow below

# (conntrack -I arguments) for an exact table; documentation addresses only
ENTRIES = [
    # SNAT, numeric order matters: .2 < .10 < .11, port 80 < 443
    "-p tcp -s 198.18.0.10 -d 203.0.113.5 --sport 40000 --dport 443 -r 203.0.113.5 -q 198.51.100.1 "
    "--reply-port-src 443 --reply-port-dst 61000 --state ESTABLISHED -t 3600 -u ASSURED",
    "-p tcp -s 198.18.0.2 -d 203.0.113.5 --sport 40001 --dport 80 -r 203.0.113.5 -q 198.51.100.1 "
    "--reply-port-src 80 --reply-port-dst 40001 --state ESTABLISHED -t 3600",
    "-p tcp -s 198.18.0.11 -d 203.0.113.10 --sport 40002 --dport 443 -r 203.0.113.10 "
    "-q 198.51.100.1 --reply-port-src 443 --reply-port-dst 61002 --state TIME_WAIT -t 100",
    "-p tcp -s 198.18.0.10 -d 203.0.113.5 --sport 40003 --dport 443 -r 203.0.113.5 -q 198.51.100.1 "
    "--reply-port-src 443 --reply-port-dst 61003 --state CLOSE_WAIT -t 100",
    "-p udp -s 198.18.0.10 -d 203.0.113.53 --sport 5353 --dport 53 -r 203.0.113.53 -q 198.51.100.1 "
    "--reply-port-src 53 --reply-port-dst 5353 -t 60",
    # (conntrack wants the ICMP fields after the reply addresses)
    "-p icmp -s 198.18.0.12 -d 203.0.113.9 -r 203.0.113.9 -q 198.51.100.1 "
    "--icmp-type 8 --icmp-code 0 --icmp-id 77 -t 29",
    # DNAT port-forward: 198.18.7.7 -> 198.51.100.1:8080 -> 198.18.0.20:80
    "-p tcp -s 192.0.2.77 -d 198.51.100.1 --sport 51000 --dport 8080 -r 198.18.0.20 -q 192.0.2.77 "
    "--reply-port-src 80 --reply-port-dst 51000 --state ESTABLISHED -t 3600",
    # local: an inside host talking to the box itself
    "-p tcp -s 198.18.0.10 -d 198.18.0.1 --sport 50022 --dport 22 -r 198.18.0.1 -q 198.18.0.10 "
    "--reply-port-src 22 --reply-port-dst 50022 --state ESTABLISHED -t 3600",
    # routed through the box without NAT
    "-p tcp -s 192.0.2.10 -d 198.18.0.30 --sport 33000 --dport 22 -r 198.18.0.30 -q 192.0.2.10 "
    "--reply-port-src 22 --reply-port-dst 33000 --state ESTABLISHED -t 3600",
    # port-only NAT (REDIRECT-like): netstat-nat cannot see it
    "-p tcp -s 198.18.0.11 -d 203.0.113.80 --sport 42000 --dport 80 -r 203.0.113.80 "
    "-q 198.18.0.11 --reply-port-src 3128 --reply-port-dst 42000 --state ESTABLISHED -t 3600",
]


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def in_ns(*argv: str) -> str:
    return sh("ip", "netns", "exec", NS, *argv)


@pytest.fixture(scope="module")
def table():
    from tests.conftest import need_lab

    need_lab()
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    try:
        in_ns("ip", "link", "set", "lo", "up")
        in_ns("ip", "link", "add", "box0", "type", "veth", "peer", "name", "box1")
        in_ns("ip", "addr", "add", f"{BOX}/24", "dev", "box0")
        in_ns("ip", "addr", "add", f"{INSIDE}/24", "dev", "box0")
        in_ns("ip", "link", "set", "box0", "up")
        for entry in ENTRIES:
            in_ns("conntrack", "-I", *entry.split())
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def netstat_nat(*flags: str) -> list[list[str]]:
    return [line.split() for line in in_ns("netstat-nat", "-n", "-o", *flags).splitlines()]


def natfleet(*flags: str) -> list[list[str]]:
    out = in_ns(sys.executable, "-m", "natfleet", "local", "-n", "-o", *flags)
    return [line.split() for line in out.splitlines()]


def without_state(rows):
    return Counter(tuple(r[:-1]) for r in rows)


@pytest.mark.parametrize("flag", ["-S", "-L", "-R"])
def test_same_rows_as_netstat_nat(table, flag):
    theirs, ours = netstat_nat(flag), natfleet(flag)
    assert theirs, f"netstat-nat {flag} printed nothing: the table was not set up"
    # netstat-nat ignores ports, so it calls the port-only NAT flow routed (tested below)
    theirs = [r for r in theirs if r[1] != PORT_ONLY_SOURCE]
    assert without_state(theirs) == without_state(ours)


def test_snat_with_nat_host_column_agrees(table):
    assert without_state(netstat_nat("-S", "-N")) == without_state(natfleet("-S", "-N"))


def test_tcp_states_agree_where_netstat_nat_is_right(table):
    theirs = {tuple(r[:-1]): r[-1] for r in netstat_nat("-S", "-p", "tcp")}
    ours = {tuple(r[:-1]): r[-1] for r in natfleet("-S", "-p", "tcp")}
    for key, state in theirs.items():
        if state in ("ESTABLISHED", "TIME_WAIT"):
            assert ours[key] == state


def test_dnat_rows_agree_on_addresses(table):
    theirs, ours = netstat_nat("-D"), natfleet("-D")
    assert [r[:3] for r in theirs] == [["tcp", "192.0.2.77:51000", "198.18.0.20:80"]], (
        "netstat-nat's DNAT view of the port-forward"
    )
    assert any(r[:3] == ["tcp", "192.0.2.77:51000", "198.18.0.20:80"] for r in ours)


# ---- where natfleet deliberately differs


def test_dnat_nat_host_shows_the_original_destination_port(table):
    theirs = netstat_nat("-D", "-N")
    ours = natfleet("-D", "-N")
    forward = [r for r in ours if r[1] == "192.0.2.77:51000"]
    assert forward[0][2] == "198.51.100.1:8080"
    # netstat-nat prints the client's port there instead
    assert [r for r in theirs if r[1] == "192.0.2.77:51000"][0][2] == "198.51.100.1:51000"


def test_port_only_nat_is_visible(table):
    ours = natfleet("-D")
    assert ["tcp", PORT_ONLY_SOURCE, "203.0.113.80:3128", "ESTABLISHED"] in ours
    assert not any(r[1] == PORT_ONLY_SOURCE for r in netstat_nat("-D") + netstat_nat("-S"))
    assert [r[1] for r in netstat_nat("-R")].count(PORT_ONLY_SOURCE) == 1  # "routed"
    assert not any(r[1] == PORT_ONLY_SOURCE for r in natfleet("-R"))


def test_snat_and_dnat_together_show_both(table):
    both = natfleet("-S", "-D")
    assert without_state(both) == without_state(natfleet("-S")) + without_state(natfleet("-D"))
    assert netstat_nat("-S", "-D") == []  # netstat-nat shows nothing for -S -D


def test_sort_is_numeric_not_lexical(table):
    ours = [r[1] for r in natfleet("-S", "-p", "tcp", "-r", "src")]
    assert ours == [
        "198.18.0.2:40001",
        "198.18.0.10:40000",
        "198.18.0.10:40003",
        "198.18.0.11:40002",
    ]
    ports = [r[2].rsplit(":", 1)[1] for r in natfleet("-S", "-p", "tcp", "-r", "dst-port")]
    assert ports == ["80", "443", "443", "443"]


def test_close_wait_is_not_shown_as_close(table):
    ours = {r[1]: r[-1] for r in natfleet("-S", "-p", "tcp")}
    assert ours["198.18.0.10:40003"] == "CLOSE_WAIT"


def test_icmp_protocol_is_exact(table):
    ours = natfleet("-S", "-p", "icmp")
    assert ours == [["icmp", "198.18.0.12", "203.0.113.9", "UNREPLIED"]]
    assert natfleet("-S", "-p", "icmpv6") == []
