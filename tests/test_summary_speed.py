"""The summary's fast path (agent.FastLines) counts exactly what parse_fields counts.

Every comparison runs the same text twice: through a Tally with the fast path and through
one without it (parse_fields for every line), and the two must agree on every counter, the
malformed-line count and examples, the skipped lines and the own-session entries.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from natfleet import agent
from natfleet.errors import LabError
from tests.conftest import DATA

OWN = frozenset(("198.51.100.1", "192.168.1.1", "2001:db8:ffff::1"))
SESSION = ("198.51.100.1", "198.19.255.1", "22", "41704")  # session_skip(): reply tuple


def tallies(request: dict, skip=None) -> tuple[agent.Tally, agent.Tally]:
    """(fast, full): the same request, with and without the fast path."""
    fast = agent.Tally(agent.Request(request), OWN, skip=skip)
    full = agent.Tally(agent.Request(request), OWN, skip=skip)
    full.fast = None
    assert fast.fast is not None
    return fast, full


def feed_blocks(tally: agent.Tally, lines: list[str], sizes: list[int]) -> None:
    """Feed ``lines`` as blocks of the given sizes (cycled), numbered as scan() does."""
    first, at, i = 1, 0, 0
    while at < len(lines):
        block = lines[at : at + sizes[i % len(sizes)]]
        tally.feed_text(first, "\n".join(block) + "\n")
        first += len(block)
        at += len(block)
        i += 1


def assert_same(lines: list[str], skip=None, sizes=(1 << 30,), request=None) -> agent.Tally:
    fast, full = tallies(request or {"mode": "summary", "top": 1000}, skip)
    for tally in (fast, full):
        feed_blocks(tally, lines, list(sizes))
    assert fast.state() == full.state()
    assert fast.summary.to_json([1024, 65535]) == full.summary.to_json([1024, 65535])
    return fast


def fixture_lines(folder: str) -> list[str]:
    return [
        p.read_text(encoding="ascii", errors="replace").rstrip("\n")
        for p in sorted((DATA / folder).glob("*.txt"))
    ]


# --------------------------------------------------------------------------- generated tables

TCP = agent.TCP_STATES.split()
SCTP = agent.SCTP_STATES.split()
DCCP = agent.DCCP_STATES.split()


def v6(rng: random.Random, net: str) -> str:
    return str(ipaddress.ip_address(ipaddress.ip_network(net)[rng.randrange(1, 50)]))


def address(rng: random.Random, family: int, where: str) -> str:
    """An address of a role: inside host, outside server, the box's own (NAT) address."""
    if family == 4:
        return {
            "inside": f"192.168.1.{rng.randrange(2, 30)}",
            "outside": f"203.0.113.{rng.randrange(1, 20)}",
            "own": rng.choice(("198.51.100.1", "192.168.1.1")),
        }[where]
    text = v6(rng, {"inside": "2001:db8::/64", "outside": "2001:db8:1::/64"}.get(where, "::/0"))
    if where == "own":
        text = "2001:db8:ffff::1"
    if rng.random() < 0.5:  # as /proc prints it: every group in four digits
        text = ipaddress.ip_address(text).exploded
    return text


def table_line(rng: random.Random) -> str:
    """One conntrack line of any protocol, state, NAT kind, family and field set."""
    family = rng.choice((4, 4, 4, 6))
    proto, pnum = rng.choice(
        (
            ("tcp", 6),
            ("tcp", 6),
            ("udp", 17),
            ("udp", 17),
            ("udplite", 136),
            ("sctp", 132),
            ("dccp", 33),
            ("unknown", 33),
            ("icmp", 1),
            ("icmpv6", 58),
            ("gre", 47),
            ("unknown", 99),
        )  # fmt: skip
    )
    if pnum == 1 and family == 6:
        proto, pnum = "icmpv6", 58
    if pnum == 58 and family == 4:
        proto, pnum = "icmp", 1
    kind = rng.choice(("snat", "snat", "dnat", "snat+dnat", "local", "routed", "redirect"))
    osrc, odst = address(rng, family, "inside"), address(rng, family, "outside")
    if kind == "local":
        odst = address(rng, family, "own")
    if kind == "routed":
        osrc = address(rng, family, "outside")
    osp, odp = str(rng.randrange(1024, 65536)), rng.choice(("53", "443", "80", "22", "3478"))
    rsrc, rdst, rsp, rdp = odst, osrc, odp, osp
    if kind in ("snat", "snat+dnat"):
        rdst = address(rng, family, "own")
        rdp = rng.choice((osp, str(rng.randrange(1024, 65536))))
    if kind in ("dnat", "snat+dnat"):
        rsrc, rsp = address(rng, family, "inside"), rng.choice((odp, "8080"))
    if kind == "redirect":
        rsp = "3128"
    head = []
    if rng.random() < 0.8:
        head += ["ipv4" if family == 4 else "ipv6", " ", "2" if family == 4 else "10", " " * 5]
    head += [proto.ljust(8), " ", str(pnum)]
    if rng.random() < 0.95:
        head += [" ", str(rng.choice((0, 29, 3599, 431999, rng.randrange(10**9))))]
    if pnum == 6:
        head += [" ", rng.choice(TCP)]
    elif pnum == 132:
        head += [" ", rng.choice(SCTP)]
    elif proto == "dccp":
        head += [" ", rng.choice(DCCP)]
    elif pnum == 47:
        head += [f" timeout={rng.randrange(200)}, stream_timeout={rng.randrange(200)}"]

    def tup(src: str, dst: str, sp: str, dp: str, reply: bool) -> str:
        text = f"src={src} dst={dst}"
        if pnum in (1, 58):
            kind_code = ("0 code=0" if reply else "8 code=0") if pnum == 1 else "128 code=0"
            text += f" type={kind_code} id={osp}"
        elif pnum == 47:
            text += f" srckey=0x{rng.randrange(99):x} dstkey=0x{rng.randrange(99):x}"
        elif proto != "unknown":
            text += f" sport={sp} dport={dp}"
        if rng.random() < 0.3:
            text += f" packets={rng.randrange(10**6)} bytes={rng.randrange(10**12)}"
        return text

    orig = tup(osrc, odst, osp, odp, False)
    if rng.random() < 0.2:
        orig += f" zone-orig={rng.randrange(4)}"
    if rng.random() < 0.4:
        orig += " [UNREPLIED]"
    reply = tup(rsrc, rdst, rsp, rdp, True)
    if rng.random() < 0.2:
        reply += f" zone-reply={rng.randrange(4)}"
    flag = rng.choice(("", "", " [ASSURED]", " [OFFLOAD]", " [HW_OFFLOAD]"))
    tail = flag + f" mark={rng.choice((0, 0, 42, 4294967295))}"
    if rng.random() < 0.1:
        tail += " secctx=system_u:object_r:unlabeled_t:s0"
    tail += f" zone={rng.choice((0, 0, 7, 65535))}"
    if rng.random() < 0.3:
        tail += f" delta-time={rng.randrange(10**6)}"
    tail += f" use={rng.randrange(1, 12)}"
    return "".join(head) + " " + orig + " " + reply + tail


MUTATIONS = [
    lambda s, r: s.replace("sport=", "sport=6", 1),  # a port over 65535, often
    lambda s, r: s.replace("dport=", "dport=9", 2)[::-1][::-1],
    lambda s, r: s.replace("use=", "use=99999999999", 1),
    lambda s, r: s.replace("zone=", "zone=7", 1),
    lambda s, r: s.replace("mark=", "mark=9999999999", 1),
    lambda s, r: s.replace("src=", "src=1", 1),
    lambda s, r: s.replace(".1", ".999", 1),
    lambda s, r: s.replace(":", "::", 1),
    lambda s, r: s.replace("ipv4", "ipv6", 1),
    lambda s, r: s.replace("ipv6", "ipv4", 1),
    lambda s, r: s.replace(" 6 ", " 256 ", 1),
    lambda s, r: s.replace(" 17 ", " 1 ", 1),
    lambda s, r: s.replace("ESTABLISHED", "ESTABLISHD", 1),
    lambda s, r: s.replace("[ASSURED]", "[ASSURED] [UNREPLIED]", 1),
    lambda s, r: s.replace("[UNREPLIED]", "[REPLIED]", 1),
    lambda s, r: s.replace(" use=", " src=1.2.3.4 use=", 1),
    lambda s, r: s.replace(" [UNREPLIED]", " src=9 [UNREPLIED]", 1),
    lambda s, r: s.replace(" mark=", "  mark=", 1),
    lambda s, r: s.replace(" mark=", "\tmark=", 1),
    lambda s, r: s.rsplit(" use=", 1)[0],
    lambda s, r: s + " ",
    lambda s, r: s[: r.randrange(len(s))],
    lambda s, r: s[: (i := r.randrange(len(s)))] + s[i + 1 :],
    lambda s, r: s[: (i := r.randrange(len(s)))] + r.choice("0 9.:=[]aZ\x00\ufffd") + s[i:],
    lambda s, r: s.replace("sport=", "sport=0", 1),  # leading zeros are still a port
    lambda s, r: s.replace("dport=", "dport=", 1).replace(" 29 ", " 4294967295 ", 1),
]


def generated_table(seed: int, n: int, odd: float = 0.05) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        line = table_line(rng)
        roll = rng.random()
        if roll < odd:
            line = rng.choice(MUTATIONS)(line, rng)
        elif roll < odd * 1.2:
            line = rng.choice(("", "   ", "conntrack v1.4.7 (conntrack-tools): 5 flow entries"))
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("folder", ["lines", "malformed"])
def test_every_fixture_line_counts_the_same(folder):
    lines = fixture_lines(folder)
    assert lines
    for line in lines:
        assert_same([line])
    assert_same(lines)
    assert_same(lines * 3, sizes=[1, 2, 5])


def test_the_fixture_tables_count_the_same():
    for path in sorted((DATA / "tables").glob("*")) + [DATA / "sort-ties.txt"]:
        if path.is_file():
            assert_same(path.read_text(encoding="ascii", errors="replace").splitlines())


@pytest.mark.parametrize("seed", range(8))
def test_generated_tables_count_the_same(seed):
    lines = generated_table(seed, 3000)
    fast = assert_same(lines, sizes=[4000])
    assert_same(lines, sizes=[7, 300, 1, 64])
    assert fast.bad > 0 and fast.skipped > 0 and fast.summary.flows > 2000


@pytest.mark.parametrize("seed", range(3))
def test_generated_tables_with_the_own_session_count_the_same(seed):
    rng = random.Random(seed)
    lines = generated_table(seed, 2000, odd=0.01)
    session = (DATA / "own-session" / "proc/net/nf_conntrack").read_text().splitlines()[0]
    near = session.replace("sport=22 dport=41704", "sport=22 dport=41705")  # another one
    for line in (session, near, session, near):
        lines.insert(rng.randrange(len(lines)), line)
    skip = agent.session_skip(("198.19.255.11", 22, "198.19.255.1", 41704))
    fast = assert_same(lines, skip=skip, sizes=[500])
    assert fast.skipped_own == 2


def test_filters_do_not_apply_to_a_summary_fast_or_not():
    request = {"mode": "summary", "filters": {"proto": "udp", "src": ["192.168.1.0/28"]}}
    assert_same(generated_table(11, 1000), request=request)


def test_every_line_the_fast_path_takes_parses_the_same_way():
    """Line by line, on mutated lines too: what the fast path counts is what parse_fields
    reads, and it counts no line that parse_fields refuses."""
    rng = random.Random(5)
    taken = refused = 0
    for i in range(6000):
        line = table_line(rng)
        if i % 2:
            line = rng.choice(MUTATIONS)(line, rng)
        fast = agent.FastLines(agent.Summary(), OWN, None)
        key = agent.fast_key(line)
        flow = None if key is None else fast.flow(key)
        try:
            fields = agent.parse_fields(line)
        except ValueError:
            assert flow is None, line
            refused += 1
            continue
        if flow is None:
            continue
        taken += 1
        nat = agent.nat_kind(fields, OWN)
        shown = fields[2] or agent.line_state(None, line)
        pnum, _t, state, osrc, _od, _os, _op, rsrc, rdst, rsp = fields[:10]
        assert flow == (pnum, state, shown, nat, osrc, rsrc, rdst, rsp), line
    assert taken > 1200 and refused > 500


def test_regular_blocks_take_the_fast_path():
    """A table of the usual shapes is counted without parse_fields (a regression that sent
    every line down the slow path would still count right, and fail here)."""
    rng = random.Random(3)
    regular = []
    while len(regular) < 500:
        line = table_line(rng)
        odd = ("gre", "unknown", "icmp", "secctx", "dccp", "zone-orig", "zone-reply")
        if not any(word in line for word in odd):
            regular.append(line)
    fast = agent.FastLines(agent.Summary(), OWN, None)
    assert fast.count(1, "\n".join(regular) + "\n") == []
    assert fast.summary.flows == 500
    left = fast.count(501, regular[0] + "\nipv4 2 tcp\n" + regular[1])
    assert left == [(502, "ipv4 2 tcp")]
    assert fast.summary.flows == 502


def test_a_summary_subclass_keeps_to_parse_fields():
    """Counters that need more fields (check mode's CheckSummary) never go the fast way."""

    class More(agent.Summary):
        pass

    tally = agent.Tally(agent.Request({"mode": "summary"}), OWN)
    assert tally.fast is not None
    tally.summary = More()
    tally.fast = None if type(tally.summary) is not agent.Summary else tally.fast
    assert agent.Tally(agent.Request({"mode": "list"}), OWN).fast is None


def test_a_whole_scan_counts_the_same_in_one_process_and_in_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "BLOCK_CHARS", 8192)
    monkeypatch.setattr(agent.threading, "active_count", lambda: 1)  # (fork is safe here)
    path = tmp_path / "table.txt"
    path.write_text("\n".join(generated_table(21, 4000)) + "\n")

    def summary(jobs: int) -> dict:
        answer = agent.handle(
            {"mode": "summary", "jobs": jobs}, agent.DumpSources(table_file=str(path))
        )
        answer.pop("seconds")
        answer.pop("cpu", None)
        return answer

    fast = [summary(1), summary(3)]
    with monkeypatch.context() as patch:  # parse_fields for every line, workers too (fork)
        patch.setattr(
            agent.Tally, "feed_text", lambda self, n, text: self.feed(n, agent._lines(text))
        )
        full = [summary(1), summary(3)]
    assert fast[0]["malformed"]["count"] > 50
    assert fast[0] == fast[1] == full[0] == full[1]


def test_the_generator_covers_what_the_summary_reports():
    lines = generated_table(1, 3000)
    tally = assert_same(lines)
    summary = tally.summary.to_json([1024, 65535])
    assert set(summary["by_nat"]) == set(agent.NAT_KINDS) and min(summary["by_nat"].values()) > 0
    assert {"tcp", "udp", "udplite", "sctp", "dccp", "icmp", "icmpv6", "gre", "99"} <= set(
        summary["by_proto"]
    )
    states = summary["by_state"]
    for shown in ("udp:UNREPLIED", "udp:ASSURED", "udp:OFFLOAD", "udp:HW_OFFLOAD", "udp:REPLIED"):
        assert shown in states
    assert any(s.startswith("sctp:") for s in states) and summary["port_pressure"]
    assert any(":" in a for a, _n in summary["top_sources"])


def test_summary_shows_what_the_agent_cost(tmp_path, capsys):
    """The details and the JSON say the agent's wall and CPU seconds."""
    import json

    from natfleet import cli

    path = tmp_path / "table.txt"
    path.write_text("\n".join(generated_table(4, 500)) + "\n")
    assert cli.main(["summary", "--input", str(path)]) == 0
    assert "s of CPU (its workers included)" in capsys.readouterr().out
    assert cli.main(["summary", "--input", str(path), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert isinstance(row["cpu"], float) and row["cpu"] >= 0


def proc_line(entry: str) -> str:
    """A save-format entry of natfleet.lab.bench as /proc/net/nf_conntrack prints it."""
    words = entry.split()
    opt = dict(zip(words[1::2], words[2::2]))
    proto = opt["-p"]
    pnum = agent.PROTO_NUMBERS[proto]
    state = f" {opt['--state']}" if "--state" in opt else ""
    flags = opt["-u"].split(",")
    unreplied = " [UNREPLIED]" if "UNREPLIED" in flags else ""
    assured = " [ASSURED]" if "ASSURED" in flags else ""
    return (
        f"ipv4     2 {proto:<8} {pnum} {opt['-t']}{state} src={opt['-s']} dst={opt['-d']} "
        f"sport={opt['--sport']} dport={opt['--dport']}{unreplied} src={opt['-r']} "
        f"dst={opt['-q']} sport={opt['--reply-port-src']} dport={opt['--reply-port-dst']}"
        f"{assured} mark=0 zone=0 use=2"
    )


def test_the_bench_table_is_unique_and_counts_the_same():
    """natfleet.lab.bench's entries: every original and reply tuple once (conntrack -R
    would skip a repeat), and many flows alike per block (the fast path's bulk counts)."""
    from natfleet.lab.bench import table_entries

    entries = list(table_entries(30_000, ["198.18.80.10", "198.18.80.11"], "198.18.80.1"))
    lines = [proc_line(e) for e in entries]
    origs = {tuple(line.split(" src=")[1].split()[:4]) for line in lines}
    replies = {tuple(line.split(" src=")[2].split()[:4]) for line in lines}
    assert len(origs) == len(replies) == 30_000
    fast = assert_same(lines, sizes=[5000, 1234])
    summary = fast.summary.to_json([1024, 65535])
    assert summary["by_nat"]["snat"] == 30_000
    assert summary["by_state"] == {
        "tcp:ESTABLISHED": 18_000,
        "udp:REPLIED": 6_000,
        "udp:UNREPLIED": 6_000,
    }
    assert summary["top_sources"] == [["198.18.80.10", 15_000], ["198.18.80.11", 15_000]]
    with pytest.raises(LabError):
        next(table_entries(10**6, ["198.18.80.10"], "198.18.80.1"))
    grown = list(table_entries(1000, ["198.18.80.10", "198.18.80.11"], "198.18.80.1"))
    grown += table_entries(29_000, ["198.18.80.10", "198.18.80.11"], "198.18.80.1", start=1000)
    assert grown == entries  # a table grown in two loads is the same table


def test_a_listing_parses_every_line_as_parse_fields_does():
    """FastFields (the listing's parser) gives parse_fields' tuple or its Malformed."""
    rng = random.Random(8)
    fast = agent.FastFields()
    taken = 0
    for i in range(8000):
        line = table_line(rng)
        if i % 2:
            line = rng.choice(MUTATIONS)(line, rng)
        try:
            want = agent.parse_fields(line)
        except ValueError:
            with pytest.raises(ValueError):
                fast.parse(line)
            continue
        assert fast.parse(line) == want, line
        found = agent.LIST_LINE.match(line)
        taken += found is not None and fast.fields(found.groups("")) is not None
    assert taken > 1500


def test_a_listing_is_the_same_with_the_fast_parser_or_without(tmp_path, monkeypatch):
    path = tmp_path / "table.txt"
    path.write_text("\n".join(generated_table(12, 3000)) + "\n")
    request = {"mode": "list", "filters": {"nat": list(agent.NAT_KINDS)}, "sort": "dst-port"}
    fast = agent.handle(request, agent.DumpSources(table_file=str(path)))
    monkeypatch.setattr(agent.FastFields, "parse", lambda self, line: agent.parse_fields(line))
    full = agent.handle(request, agent.DumpSources(table_file=str(path)))
    for answer in (fast, full):
        answer.pop("seconds")
        answer.pop("cpu")
    assert len(fast["rows"]) > 2000 and fast["malformed"]["count"] > 50
    assert fast == full
