"""Every netstat-nat flag of ``natfleet conns`` against every kind of target.

For each of ``-n -p -s -d -S -D -L -R -x -r -o -N`` and each target kind (``--input FILE``,
``--local``, ``--host`` over a fake transport, AWS discovery in in-process moto), the test
checks the request that reaches the box's agent, which targets were read, and the rows
printed. The expected rows are computed here from the text of tests/data/tables/lab-box.txt
with conntrack's own meaning of the fields (no natfleet code), so a wrong filter, layout or
option binding (``-L`` once read this machine instead of the fleet) fails.

The fake box (:class:`FakeBox`) is a transport that runs the real agent on the table: the
request comes off stdin exactly as it would reach a box, and the answer goes back through the
real trust boundary. No DNS: name lookups are answered by a fake ``gethostbyaddr``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from natfleet import agent, api, fleet, remote
from natfleet.cli import main
from natfleet.remote import ExecResult
from tests.conftest import DATA

TABLE = DATA / "tables" / "lab-box.txt"
BOX_ADDRESSES = ("198.19.255.11", "198.51.100.11", "198.18.1.1")  # the fake box's own
NAMES = {"203.0.113.5": "www.example.net", "203.0.113.53": "ns.example.net"}  # reverse DNS
HOSTS = ("198.51.100.7", "198.51.100.8")  # --host targets (documentation range)
FLAGS = {
    "-n": [],
    "-p": ["udp"],
    "-s": ["198.18.1.10"],
    "-d": ["203.0.113.5"],
    "-S": [],
    "-D": [],
    "-L": [],
    "-R": [],
    "-x": [],
    "-r": ["dst-port"],
    "-o": [],
    "-N": [],
}
KINDS = ("input", "local", "host", "aws")
PROTOS = ("tcp", "udp", "icmp")


# --- the table, read here with conntrack's meaning of the fields ------------------------


@dataclass(frozen=True)
class Entry:
    """One line of the table: the original and reply tuples, as conntrack prints them."""

    proto: str
    state: str
    osrc: str
    odst: str
    osp: Optional[str]
    odp: Optional[str]
    rsrc: str
    rdst: str
    rsp: Optional[str]
    rdp: Optional[str]

    @classmethod
    def parse(cls, line: str) -> Entry:
        words = line.split()
        proto = words[2]
        pairs = [w.split("=", 1) for w in words if "=" in w]
        keys = [k for k, _ in pairs]
        second = keys.index("src", 1)  # the reply tuple starts at the second src=
        orig, reply = dict(pairs[:second]), dict(pairs[second:])
        if proto == "tcp":
            state = words[5]
        elif "[UNREPLIED]" in words:
            state = "UNREPLIED"
        elif "[ASSURED]" in words:
            state = "ASSURED"
        else:
            state = "REPLIED"
        port = ("id", "id") if proto == "icmp" else ("sport", "dport")
        return cls(
            proto,
            state,
            orig["src"],
            orig["dst"],
            orig[port[0]],
            orig.get(port[1]) if proto != "icmp" else None,
            reply["src"],
            reply["dst"],
            reply.get(port[0]) if proto != "icmp" else None,
            reply[port[1]],
        )

    def kind(self, own: tuple[str, ...]) -> str:
        """snat when the reply goes to another source, dnat when it comes from another
        destination (ports count; ICMP's id plays the source port), else local or routed."""
        snat = self.rdst != self.osrc or self.rdp != self.osp
        dnat = self.rsrc != self.odst or self.rsp != self.odp
        if snat and dnat:
            return "snat+dnat"
        if snat or dnat:
            return "snat" if snat else "dnat"
        return "local" if self.osrc in own or self.odst in own else "routed"

    def shown(self, own: tuple[str, ...]) -> tuple[tuple, tuple, tuple]:
        """(source, NAT host, destination) as netstat-nat lays them out; a DNAT's NAT host
        is the address the client used, its real destination the server's."""
        kind = self.kind(own)
        source = (self.osrc, self.osp)
        if kind == "snat":
            return source, (self.rdst, self.rdp), (self.odst, self.odp)
        if kind == "dnat":
            return source, (self.odst, self.odp), (self.rsrc, self.rsp)
        if kind == "snat+dnat":
            return source, (self.rdst, self.rdp), (self.rsrc, self.rsp)
        return source, (None, None), (self.odst, self.odp)


def entries() -> list[Entry]:
    return [Entry.parse(line) for line in TABLE.read_text().splitlines() if line.strip()]


def _service(port: str, proto: str) -> str:
    try:
        return socket.getservbyport(int(port), proto)
    except OSError:
        return port


def _endpoint(where: tuple, proto: str) -> str:
    addr, port = where
    return addr if proto == "icmp" or port is None else f"{addr}:{port}"


def expected(flag: Optional[str], own: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The rows ``conns -n FLAG`` must print for the table (``flag`` None: no other flag),
    as word tuples without the host label, in the default order: source address, then
    source port, numerically."""
    value = FLAGS.get(flag or "", [])
    kinds = {"-S": {"snat", "snat+dnat"}, "-D": {"dnat", "snat+dnat"}, "-L": {"local"}}
    kinds["-R"] = {"routed"}
    wanted = kinds.get(flag, {"snat", "dnat", "snat+dnat"})
    rows = []
    for e in entries():
        kind = e.kind(own)
        if kind not in wanted:
            continue
        if flag == "-p" and e.proto != value[0]:
            continue
        if flag == "-s" and e.osrc != value[0]:
            continue
        if flag == "-d" and value[0] not in (e.odst, e.rsrc):
            continue
        source, nat_host, dest = e.shown(own)
        cells = [e.proto, _endpoint(source, e.proto)]
        if flag == "-N" and kind not in ("local", "routed"):
            cells.append(_endpoint(nat_host, e.proto))
        cells += [_endpoint(dest, e.proto), e.state]
        sort_key = (int(ipaddress.ip_address(e.osrc)), int(e.osp) if e.proto != "icmp" else -1)
        rows.append((sort_key, tuple(cells)))
    return [cells for _key, cells in sorted(rows, key=lambda r: r[0])]


# --- the boxes ----------------------------------------------------------------------------


def fib_trie(addresses: tuple[str, ...]) -> str:
    """A /proc/net/fib_trie naming ``addresses`` as the box's own (LOCAL) addresses."""
    lines = ["Local:", "  +-- 0.0.0.0/0 3 0 5"]
    for addr in addresses:
        lines += [f"     |-- {addr}", "        /32 host LOCAL"]
    return "\n".join(lines) + "\n"


def box_sources() -> agent.DumpSources:
    """A NAT box whose table is lab-box.txt and whose own addresses are BOX_ADDRESSES."""
    files = {agent.FIB_TRIE_PATH: fib_trie(BOX_ADDRESSES), agent.HOSTNAME_PATH: "fakebox\n"}
    return agent.DumpSources(files, table_file=str(TABLE))


class FakeLocal(agent.DumpSources):
    """Stands for ``agent.LocalSources("/")``: this machine is the fake box."""

    made: list[str] = []

    def __init__(self, root: str = "/") -> None:
        box = box_sources()
        super().__init__(box.files, table_file=box.table_file)
        self.root = "/nonexistent-natfleet-test-root"
        FakeLocal.made.append(root)


class FakeBox:
    """A transport whose every target is the fake box: it takes the request off stdin as a
    box's python3 would (length line, agent source, JSON request) and answers it with the
    real agent, in the wire format, through ``on_stdout``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def exec(self, target, command, stdin, on_stdout, deadline, max_stderr=65536, as_root=True):
        size, rest = stdin.split(b"\n", 1)
        request = json.loads(rest[int(size) :])
        program = zlib.decompress(rest[: int(size)])
        assert program == remote.agent_bundle(request.get("mode", "list"))  # the agent itself
        self.seen.append((target.host, request))
        if request.get("encoding") == "compact":
            out = b"".join(agent.answer_bytes(request, box_sources()))
        else:
            text = "".join(line + "\n" for line in agent.answer_lines(request, box_sources()))
            out = text.encode("ascii")
        on_stdout(out)
        return ExecResult(0, b"", len(out), f"root@{target.host}:22", "root")


def fake_gethostbyaddr(addr: str) -> tuple[str, list[str], list[str]]:
    if addr in NAMES:
        return NAMES[addr], [], [addr]
    raise socket.herror(1, "Unknown host")


@pytest.fixture
def boxes(monkeypatch):
    """Every transport, local read and request recorded; reverse DNS answered here."""
    box = FakeBox()
    handled: list[tuple[str, dict[str, Any]]] = []
    real_in_process = fleet._in_process

    def in_process(reader, request, sources):  # this machine or a dump, read in-process
        where = getattr(sources, "table_file", None) or type(sources).__name__
        if isinstance(sources, FakeLocal):
            where = "local"
        handled.append((str(where), request))
        return real_in_process(reader, request, sources)

    monkeypatch.setattr(api, "ssh_executor", lambda options: box)
    monkeypatch.setattr(fleet, "_in_process", in_process)
    monkeypatch.setattr(agent, "LocalSources", FakeLocal)
    monkeypatch.setattr(socket, "gethostbyaddr", fake_gethostbyaddr)
    FakeLocal.made = []
    return box, handled


@pytest.fixture
def nat_instances(session, monkeypatch):
    """Two running instances tagged Role=nat (and one that is not a NAT) in moto; their
    private addresses."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    ec2 = session.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="198.18.4.0/24")["Subnet"]["SubnetId"]
    addresses = []
    for name, role in (("nat-a", "nat"), ("nat-b", "nat"), ("web", "web")):
        tags = [{"Key": "Name", "Value": name}, {"Key": "Role", "Value": role}]
        inst = ec2.run_instances(
            ImageId="ami-760aaa0f",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            InstanceType="t4g.nano",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]
        if role == "nat":
            addresses.append(inst["PrivateIpAddress"])
    return sorted(addresses)


def target_options(kind: str) -> list[str]:
    if kind == "input":
        return ["--input", str(TABLE)]
    if kind == "local":
        return ["--local"]
    if kind == "host":
        return [arg for host in HOSTS for arg in ("--host", f"root@{host}")]
    return ["--tag", "Role=nat"]  # AWS discovery


def run_conns(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(["conns", *argv])
    out = capsys.readouterr().out
    return code, out.splitlines()


def data_rows(lines: list[str], width: int) -> list[tuple[str, ...]]:
    """The table's rows as their last ``width`` words (the host label is left out)."""
    rows = []
    for line in lines:
        words = line.split()
        if line.startswith("natfleet:") or not any(w in PROTOS for w in words):
            continue
        rows.append(tuple(words[-width:]))
    return rows


def _own(kind: str) -> tuple[str, ...]:
    return () if kind == "input" else BOX_ADDRESSES  # a saved file says nothing of its box


def _copies(kind: str) -> int:
    return 2 if kind in ("host", "aws") else 1


# --- the request and the targets -----------------------------------------------------------


def expected_request(flag: str) -> dict[str, Any]:
    """What ``conns -n FLAG`` asks every box, from the flag's netstat-nat meaning."""
    value = FLAGS[flag]
    nat = {
        "-S": ["snat", "snat+dnat"],
        "-D": ["dnat", "snat+dnat"],
        "-L": ["local"],
        "-R": ["routed"],
    }.get(flag)
    return {
        "proto": value[0] if flag == "-p" else None,
        "src": [value[0] + "/32"] if flag == "-s" else [],
        "dst": [value[0] + "/32"] if flag == "-d" else [],
        "nat": sorted(nat or ["snat", "dnat", "snat+dnat"]),
        "sort": value[0] if flag == "-r" else None,
        "resolve": False,
    }


def _asked(request: dict[str, Any]) -> dict[str, Any]:
    filters = request.get("filters") or {}
    return {
        "proto": filters.get("proto"),
        "src": filters.get("src"),
        "dst": filters.get("dst"),
        "nat": sorted(filters.get("nat") or []),
        "sort": request.get("sort"),
        "resolve": request.get("resolve"),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", list(FLAGS))
def test_request_and_targets(flag, kind, boxes, capsys, request):
    box, handled = boxes
    argv = ["-n"] + ([] if flag == "-n" else [flag, *FLAGS[flag]]) + target_options(kind)
    hosts: tuple[str, ...] = HOSTS
    if kind == "aws":
        hosts = tuple(request.getfixturevalue("nat_instances"))
    code, _lines = run_conns(capsys, argv)
    assert code == 0
    asked = [r for _where, r in box.seen] + [r for _where, r in handled]
    assert asked, "no box was asked anything"
    assert all(_asked(r) == expected_request(flag) for r in asked)
    assert all(r.get("mode", "list") == "list" for r in asked)
    if kind in ("host", "aws"):  # the fleet, over the transport, and nothing else
        assert sorted(host for host, _r in box.seen) == sorted(hosts)
        assert not handled and not FakeLocal.made
    elif kind == "local":  # this machine, directly; never a box, never AWS
        assert [where for where, _r in handled] == ["local"] and not box.seen
    else:
        assert [where for where, _r in handled] == [str(TABLE)] and not box.seen
        assert not FakeLocal.made


def test_L_with_aws_discovery_reads_the_fleet_not_this_machine(boxes, nat_instances, capsys):
    """The bug of issue 12: -L shared its dest with --local, so AWS discovery was skipped."""
    box, handled = boxes
    code, lines = run_conns(capsys, ["-nN", "-L", "--tag", "Role=nat"])
    assert code == 0
    assert sorted(h for h, _r in box.seen) == nat_instances
    assert not FakeLocal.made and not handled
    rows = data_rows(lines, 4)
    assert Counter(rows) == Counter(expected("-L", BOX_ADDRESSES) * 2)


# --- the rows printed ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", [f for f in FLAGS if f not in ("-n", "-r")])
def test_rows_printed(flag, kind, boxes, capsys, request):
    if kind == "aws":
        request.getfixturevalue("nat_instances")
    argv = ["-n", flag, *FLAGS[flag], *target_options(kind)]
    code, lines = run_conns(capsys, argv)
    assert code == 0
    rows = data_rows(lines, 5 if flag == "-N" else 4)
    want = expected(flag, _own(kind))
    if _copies(kind) == 1:
        assert rows == want  # the same rows, in the same (source) order
    else:
        assert Counter(rows) == Counter(want * 2)
        keys = [want.index(row) for row in rows]
        assert keys == sorted(keys)  # sorted fleet-wide by source
    if flag == "-L" and kind == "input":
        assert rows == []  # a saved table does not say which addresses were the box's


@pytest.mark.parametrize("kind", KINDS)
def test_names_without_n(kind, boxes, capsys, request):
    """Without -n, addresses are looked up (on the box) and ports are service names."""
    if kind == "aws":
        request.getfixturevalue("nat_instances")
    code, lines = run_conns(capsys, target_options(kind))
    assert code == 0
    rows = data_rows(lines, 4)
    want = expected(None, _own(kind))
    named = [
        (proto, _name(src, proto), _name(dst, proto), state) for proto, src, dst, state in want
    ]
    assert Counter(rows) == Counter(named * _copies(kind))
    assert any("www.example.net:https" in row for row in rows)
    box, handled = boxes
    asked = [r for _w, r in box.seen] + [r for _w, r in handled]
    assert asked and all(r["resolve"] is True for r in asked)


def _name(cell: str, proto: str) -> str:
    addr, _, port = cell.partition(":")
    name = NAMES.get(addr, addr)
    return f"{name}:{_service(port, proto)}" if port else name


@pytest.mark.parametrize("kind", KINDS)
def test_sort_by_dst_port(kind, boxes, capsys, request):
    """-r dst-port: rows ordered by destination port, numerically (no port: first)."""
    if kind == "aws":
        request.getfixturevalue("nat_instances")
    code, lines = run_conns(capsys, ["-n", "-r", "dst-port", *target_options(kind)])
    assert code == 0
    rows = data_rows(lines, 4)
    assert Counter(rows) == Counter(expected("-r", _own(kind)) * _copies(kind))
    ports = [int(row[2].rpartition(":")[2]) if ":" in row[2] else -1 for row in rows]
    assert ports == sorted(ports) and len(set(ports)) > 2


@pytest.mark.parametrize("kind", KINDS)
def test_o_drops_the_header_and_x_widens_the_columns(kind, boxes, capsys, request):
    if kind == "aws":
        request.getfixturevalue("nat_instances")
    options = target_options(kind)
    _code, plain = run_conns(capsys, ["-n", *options])
    _code, bare = run_conns(capsys, ["-n", "-o", *options])
    _code, wide = run_conns(capsys, ["-n", "-x", *options])

    def headers(lines: list[str]) -> list[str]:
        return [line for line in lines if "proto" in line.lower().split()]

    assert len(headers(plain)) == 1 and plain[0] == headers(plain)[0]
    assert headers(bare) == []
    assert data_rows(bare, 4) == data_rows(plain, 4)
    assert data_rows(wide, 4) == data_rows(plain, 4)
    plain_rows = [line for line in plain if data_rows([line], 4)]
    wide_rows = [line for line in wide if data_rows([line], 4)]
    assert all(len(w) > len(p) for w, p in zip(wide_rows, plain_rows))


def test_expected_rows_cover_every_kind_of_entry():
    """The table has SNAT, DNAT, local and routed entries, so every flag selects something."""
    kinds = Counter(e.kind(BOX_ADDRESSES) for e in entries())
    assert set(kinds) == {"snat", "dnat", "local", "routed"}
    assert all(expected(flag, BOX_ADDRESSES) for flag in FLAGS)
