"""The agent's parser, classifier, filters and summary, on real kernel lines in tests/data."""

from __future__ import annotations

import io
import ipaddress
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natfleet import agent
from natfleet import answer as answer_module
from tests.conftest import DATA

LINES = sorted((DATA / "lines").glob("*.txt"))
MALFORMED = sorted((DATA / "malformed").glob("*.txt"))
ROOT = DATA / "root"
OWN = {"198.51.100.1", "192.168.1.1"}


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="ascii", errors="replace").splitlines()


@pytest.mark.parametrize("path", LINES, ids=lambda p: p.stem)
def test_line_parses_to_expected_json(path):
    expected = json.loads(path.with_suffix(".json").read_text())
    got = []
    for line in _read_lines(path):
        flow = agent.Flow.parse(line, OWN)
        row = flow.to_json()
        row["display_state"] = flow.display_state()
        got.append(row)
    assert got == expected


@pytest.mark.parametrize("path", LINES, ids=lambda p: p.stem)
def test_json_row_round_trips_through_from_json(path):
    for line in _read_lines(path):
        flow = agent.Flow.parse(line, OWN)
        back = agent.Flow.from_json(json.loads(json.dumps(flow.to_json())))
        assert back.shown() == flow.shown()
        assert back.display_state() == flow.display_state()


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.stem)
def test_malformed_line_is_counted_and_reported(path):
    text = path.read_text(encoding="ascii", errors="replace")
    good = (DATA / "lines" / "tcp-snat-assured.txt").read_text()
    answer = agent.handle(
        {"mode": "list"},
        agent.DumpSources({agent.TABLE_PROC: good + text + good}),
    )
    assert answer["ok"]
    assert answer["lines"] == 3
    assert answer["malformed"]["count"] == 1
    example = answer["malformed"]["examples"][0]
    assert example["line"] == 2
    assert example["text"] == agent.printable(text.rstrip("\n"))  # escaped by the agent
    assert example["text"].isprintable()
    assert len(answer["rows"]) == 2


def test_blank_lines_and_conntrack_trailer_are_not_malformed():
    good = (DATA / "lines" / "conntrack-L-plain.txt").read_text()
    trailer = "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n"
    answer = agent.handle(
        {"mode": "list"}, agent.DumpSources({agent.TABLE_PROC: trailer + "\n" + good})
    )
    assert answer["malformed"]["count"] == 0
    assert len(answer["rows"]) == 1


def test_malformed_examples_are_capped_but_all_are_counted():
    bad = "ipv4 2 tcp 6 1 ESTABLISHED src=1.2.3.4\n" * 50
    answer = agent.handle({"mode": "summary"}, agent.DumpSources({agent.TABLE_PROC: bad}))
    assert answer["malformed"]["count"] == 50
    assert len(answer["malformed"]["examples"]) == agent.MALFORMED_EXAMPLES
    assert answer["summary"]["flows"] == 0


def test_host_facts_from_a_fixture_root():
    facts = agent.host_facts(agent.LocalSources(str(ROOT)))
    assert facts["hostname"] == "natbox"
    assert facts["count"] == 11
    assert facts["max"] == 262144
    assert facts["port_range"] == [32768, 60999]
    # summed over the per-CPU rows by the header's names; entries is not summed
    assert facts["stats"]["insert_failed"] == 0x2 + 0x10
    assert facts["stats"]["drop"] == 1
    assert facts["stats"]["early_drop"] == 4
    assert facts["stats"]["invalid"] == 3
    assert facts["stats"]["entries"] == 11
    assert facts["addresses"] == ["192.168.1.1", "198.51.100.1", "2001:db8:ffff::1", "::1"]
    assert facts["ena"] == {}


def test_ena_counters_only_the_keys_the_driver_has():
    sources = agent.DumpSources(
        {
            "/sys/class/net/eth0/device/driver": "../../../bus/pci/drivers/ena",
            "/sys/class/net/lo/x": "",
            "$ ethtool -S eth0": "NIC statistics:\n     conntrack_allowance_exceeded: 7\n"
            "     bw_in_allowance_exceeded: 0\n     tx_timeout: 3\n",
        }
    )
    assert agent.read_ena(sources) == {
        "eth0": {"conntrack_allowance_exceeded": 7, "bw_in_allowance_exceeded": 0}
    }


def _summary():
    answer = agent.handle({"mode": "summary", "top": 3}, agent.LocalSources(str(ROOT)))
    assert answer["ok"], answer
    return answer, answer["summary"]


def test_summary_counts_by_hand():
    answer, s = _summary()
    assert s["flows"] == 11
    assert s["by_nat"] == {"snat": 6, "dnat": 2, "snat+dnat": 1, "local": 1, "routed": 1}
    assert s["by_proto"] == {"tcp": 8, "udp": 2, "icmp": 1}
    assert s["by_state"]["tcp:ESTABLISHED"] == 4
    assert s["by_state"]["udp:UNREPLIED"] == 2
    assert s["by_state"]["tcp:CLOSE_WAIT"] == 1
    assert s["tcp_snat_established"] == 4
    assert s["top_sources"] == [["192.168.1.10", 4], ["192.168.1.12", 2], ["192.0.2.10", 1]]
    assert s["top_destinations"][:2] == [["203.0.113.5", 3], ["203.0.113.53", 2]]
    assert s["top_error"] == 0
    assert s["port_range_size"] == 28232
    assert s["port_pressure"][0] == {
        "nat_ip": "198.51.100.1",
        "dst": "203.0.113.5",
        "dport": 443,
        "proto": "tcp",
        "ports": 2,
        "pct": 0.01,
    }
    assert s["port_pressure"][1]["dst"] == "203.0.113.53"
    assert s["port_pressure"][1]["ports"] == 2
    assert s["fill_pct"] == 0.0
    assert answer["stats"]["insert_failed"] == 18


def _rows(**filters):
    request = {"mode": "list", "filters": filters}
    answer = agent.handle(request, agent.LocalSources(str(ROOT)))
    assert answer["ok"], answer
    return answer["rows"]


def test_default_listing_shows_translated_flows_only():
    assert {r["nat"] for r in _rows()} == {"snat", "dnat", "snat+dnat"}
    assert len(_rows()) == 9


def test_snat_and_dnat_flags_add_up():
    assert len(_rows(nat=["snat", "snat+dnat"])) == 7
    assert len(_rows(nat=["dnat", "snat+dnat"])) == 3
    assert len(_rows(nat=["snat", "dnat", "snat+dnat"])) == 9


def test_local_and_routed():
    assert [r["orig"]["dst"] for r in _rows(nat=["local"])] == ["192.168.1.1"]
    assert [r["orig"]["src"] for r in _rows(nat=["routed"])] == ["192.0.2.10"]


def test_protocol_by_full_name_and_number():
    assert [r["proto"] for r in _rows(proto="icmp")] == ["icmp"]
    assert _rows(proto="icmpv6") == []
    assert len(_rows(proto="6")) == 6


def test_dst_filter_matches_a_dnat_public_address():
    rows = _rows(dst=["198.51.100.1"], nat=["dnat"])
    assert [r["reply"]["src"] for r in rows] == ["192.168.1.20"]


def test_src_filter_takes_cidr():
    rows = _rows(src=["192.168.1.0/24"])
    assert len(rows) == 7
    assert all(r["orig"]["src"].startswith("192.168.1.") for r in rows)


def test_sort_is_numeric():
    request = {"mode": "list", "sort": "src"}
    rows = agent.handle(request, agent.LocalSources(str(ROOT)))["rows"]
    srcs = [(r["orig"]["src"], r["orig"].get("sport", r["orig"].get("id"))) for r in rows]
    assert srcs[:4] == [
        ("192.168.1.2", 40000),
        ("192.168.1.10", 5353),
        ("192.168.1.10", 40000),
        ("192.168.1.10", 40001),
    ]
    assert srcs[-1][0] == "2001:db8::10"  # IPv4 first, then IPv6
    request = {"mode": "list", "sort": "dst-port", "filters": {"proto": "tcp"}}
    rows = agent.handle(request, agent.LocalSources(str(ROOT)))["rows"]
    ports = [agent.Flow.from_json(r).shown()[2][1] for r in rows]
    assert ports == sorted(ports, key=int)
    assert ports[0] == "80"


NAN, INF = float("nan"), float("inf")
GOOD_REQUEST = {
    "mode": "list",
    "filters": {"proto": "tcp", "src": ["192.168.1.0/24"], "dst": None, "nat": ["snat"]},
    "sort": "dst-port",
    "top": 10,
    "limit": 5,
    "resolve": False,
    "resolve_budget": 5.0,
    "jobs": None,
}
# (the field as the error names it, a request, what the error says)
BAD_REQUESTS = [
    ("the request", [], "must be a JSON object"),
    ("the request", "list", "must be a JSON object"),
    ("the request", None, "must be a JSON object"),
    ("mdoe", {"mdoe": "list"}, "unknown key"),
    ("mode", {"mode": "nope"}, "must be list or summary"),
    ("mode", {"mode": None}, "must be list or summary"),
    ("mode", {"mode": ["list"]}, "must be list or summary"),
    ("filters", {"filters": "abc"}, "must be an object, not str"),
    ("filters", {"filters": ["tcp"]}, "must be an object, not list"),
    ("filters", {"filters": 5}, "must be an object, not int"),
    ("filters.port", {"filters": {"port": 80}}, "unknown key"),
    ("filters.proto", {"filters": {"proto": "tcpx"}}, "unknown protocol 'tcpx'"),
    ("filters.proto", {"filters": {"proto": ""}}, "unknown protocol"),
    ("filters.proto", {"filters": {"proto": "256"}}, "unknown protocol"),
    ("filters.proto", {"filters": {"proto": "9" * 5000}}, "unknown protocol"),
    ("filters.proto", {"filters": {"proto": 256}}, "0 to 255"),
    ("filters.proto", {"filters": {"proto": -1}}, "0 to 255"),
    ("filters.proto", {"filters": {"proto": True}}, "not bool"),
    ("filters.proto", {"filters": {"proto": 6.0}}, "not float"),
    ("filters.proto", {"filters": {"proto": ["tcp"]}}, "not list"),
    ("filters.src", {"filters": {"src": "192.0.2.0/24"}}, "must be a list"),
    ("filters.src", {"filters": {"src": ["not-an-address"]}}, "not an address or CIDR"),
    ("filters.src", {"filters": {"src": [3221225984]}}, "not an address or CIDR"),
    ("filters.src", {"filters": {"src": {"192.0.2.1": 1}}}, "must be a list"),
    ("filters.src", {"filters": {"src": 5}}, "must be a list"),
    ("filters.dst", {"filters": {"dst": "203.0.113.5"}}, "must be a list"),
    ("filters.dst", {"filters": {"dst": [None]}}, "not an address or CIDR"),
    ("filters.nat", {"filters": {"nat": "snat"}}, "must be a list"),
    ("filters.nat", {"filters": {"nat": ["masq"]}}, "not a NAT kind"),
    ("filters.nat", {"filters": {"nat": [1]}}, "not a NAT kind"),
    ("filters.nat", {"filters": {"nat": {"snat": True}}}, "must be a list"),
    ("sort", {"sort": "size"}, "must be one of"),
    ("sort", {"sort": 1}, "must be one of"),
    ("sort", {"sort": ["src"]}, "must be one of"),
    ("top", {"top": "x"}, "not str"),
    ("top", {"top": "10"}, "not str"),
    ("top", {"top": True}, "not bool"),
    ("top", {"top": 1.5}, "not float"),
    ("top", {"top": None}, "not null"),
    ("top", {"top": 0}, "from 1 to 1000"),
    ("top", {"top": 1001}, "from 1 to 1000"),
    ("top", {"top": -3}, "from 1 to 1000"),
    ("limit", {"limit": 0}, "1 or more"),
    ("limit", {"limit": -1}, "1 or more"),
    ("limit", {"limit": "5"}, "not str"),
    ("limit", {"limit": True}, "not bool"),
    ("limit", {"limit": 1.0}, "not float"),
    ("resolve", {"resolve": "yes"}, "true or false"),
    ("resolve", {"resolve": 1}, "true or false"),
    ("resolve", {"resolve": None}, "true or false"),
    ("resolve_budget", {"resolve_budget": 0}, "above 0"),
    ("resolve_budget", {"resolve_budget": -1.0}, "above 0"),
    ("resolve_budget", {"resolve_budget": 60.5}, "at most 60"),
    ("resolve_budget", {"resolve_budget": NAN}, "above 0"),
    ("resolve_budget", {"resolve_budget": INF}, "above 0"),
    ("resolve_budget", {"resolve_budget": "5"}, "above 0"),
    ("resolve_budget", {"resolve_budget": True}, "above 0"),
    ("resolve_budget", {"resolve_budget": None}, "above 0"),
    ("jobs", {"jobs": 0}, "from 1 to 64"),
    ("jobs", {"jobs": 65}, "from 1 to 64"),
    ("jobs", {"jobs": "2"}, "not str"),
    ("jobs", {"jobs": True}, "not bool"),
    ("jobs", {"jobs": 2.0}, "not float"),
]


@pytest.mark.parametrize(("field", "request_", "says"), BAD_REQUESTS, ids=lambda v: repr(v)[:40])
def test_a_bad_request_field_is_a_bad_request_naming_it(field, request_, says):
    answer = agent.handle(request_, agent.LocalSources(str(ROOT)))
    assert answer["ok"] is False, answer
    assert answer["error"]["kind"] == "bad_request"
    message = answer["error"]["message"]
    if field != "the request":
        assert message.startswith(field + ": "), message
    assert says in message
    assert len(message) < 400  # a 5,000-digit value is not echoed whole


@pytest.mark.parametrize(("field", "request_", "says"), BAD_REQUESTS, ids=lambda v: repr(v)[:40])
def test_a_bad_request_field_is_one_strict_wire_line(field, request_, says):
    lines = list(agent.answer_lines(request_, agent.LocalSources(str(ROOT))))
    assert len(lines) == 1
    assert json.loads(lines[0], parse_constant=_no_constant) == agent.handle(
        request_, agent.LocalSources(str(ROOT))
    )


def test_the_three_requests_of_issue_7_are_answers():
    """{"top":"x"} and {"filters":"abc"} raised; a src string was read letter by letter."""
    sources = agent.LocalSources(str(ROOT))
    for request, field in (
        ({"mode": "summary", "top": "x"}, "top"),
        ({"filters": "abc"}, "filters"),
        ({"filters": {"src": "192.0.2.0/24"}}, "filters.src"),
    ):
        answer = agent.handle(request, sources)
        assert answer["error"]["kind"] == "bad_request"
        assert answer["error"]["message"].startswith(field + ": ")


# (a field's value, the Request attribute, what it becomes): bounds included
GOOD_FIELDS = [
    ({"mode": "summary"}, "mode", "summary"),
    ({}, "mode", "list"),
    ({"filters": None}, "pnum", None),
    ({"filters": {"proto": "TCP"}}, "pnum", 6),
    ({"filters": {"proto": "17"}}, "pnum", 17),
    ({"filters": {"proto": 0}}, "pnum", 0),
    ({"filters": {"proto": 255}}, "pnum", 255),
    ({"filters": {"proto": None}}, "pnum", None),
    ({"filters": {"src": []}}, "src", []),
    ({"filters": {"dst": ["2001:db8::/32"]}}, "dst", [ipaddress.ip_network("2001:db8::/32")]),
    ({"filters": {"nat": ["local", "routed"]}}, "nat", frozenset(["local", "routed"])),
    ({"filters": {"nat": None}}, "nat", frozenset(["snat", "dnat", "snat+dnat"])),
    ({"sort": None}, "sort", None),
    ({"sort": "state"}, "sort", "state"),
    ({}, "top", 10),
    ({"top": 1}, "top", 1),
    ({"top": 1000}, "top", 1000),
    ({"limit": None}, "limit", None),
    ({"limit": 1}, "limit", 1),
    ({"resolve": True}, "resolve", True),
    ({}, "resolve_budget", 5.0),
    ({"resolve_budget": 60}, "resolve_budget", 60.0),
    ({"resolve_budget": 0.001}, "resolve_budget", 0.001),
    ({"jobs": 1}, "jobs", 1),
    ({"jobs": 64}, "jobs", 64),
]


@pytest.mark.parametrize(("request_", "attribute", "value"), GOOD_FIELDS, ids=repr)
def test_a_good_request_field_takes_effect(request_, attribute, value):
    assert getattr(agent.Request(request_), attribute) == value


def test_every_documented_field_at_once_is_a_request():
    answer = agent.handle(GOOD_REQUEST, agent.LocalSources(str(ROOT)))
    assert answer["ok"], answer
    assert 0 < len(answer["rows"]) <= 5
    assert {r["proto"] for r in answer["rows"]} == {"tcp"}


def test_random_requests_never_raise():
    """Every field given values of every JSON type: always an answer, never an exception."""
    rng = random.Random(7)
    values = [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**70,
        1.5,
        NAN,
        INF,
        "",
        "x",
        "tcp",
        "src",
        "192.0.2.0/24",
        [],
        ["snat"],
        ["192.0.2.1"],
        [None],
        {},
        {"proto": "udp"},
    ]
    keys = list(agent.REQUEST_KEYS) + ["bogus"]
    sources = agent.LocalSources(str(ROOT))
    kinds = set()
    for _ in range(400):
        request = {rng.choice(keys): rng.choice(values) for _ in range(rng.randrange(1, 4))}
        if rng.random() < 0.3:
            request["filters"] = {rng.choice(agent.FILTER_KEYS): rng.choice(values)}
        answer = agent.handle(request, sources)
        assert isinstance(answer["ok"], bool)
        kinds.add(answer.get("error", {}).get("kind"))
        if not answer["ok"]:
            assert answer["error"]["kind"] == "bad_request", answer
    assert {None, "bad_request"} <= kinds  # both good and bad ones were drawn


# ------------------------------------------------------------------ garbled host facts

FACTS = DATA / "malformed" / "facts"
# overlay folder -> (the fact that becomes unknown, what it becomes)
GARBLED_FACTS = {
    "stat-not-hex": ("stats", None),
    "stat-ragged-row": ("stats", None),
    "stat-header-only": ("stats", None),
    "stat-empty": ("stats", None),
    "stat-header-not-names": ("stats", None),
    "port-range-not-numbers": ("port_range", None),
    "port-range-reversed": ("port_range", None),
    "port-range-one-number": ("port_range", None),
    "port-range-over-65535": ("port_range", None),
    "count-not-a-number": ("count", None),
    "max-huge": ("max", None),
    "max-negative": ("max", None),
    "fib-trie-not-an-address": ("addresses", ["2001:db8:ffff::1", "::1"]),
    "if-inet6-not-hex": ("addresses", ["192.168.1.1", "198.51.100.1"]),
    "if-inet6-short": ("addresses", ["192.168.1.1", "198.51.100.1"]),
    "hostname-too-long": ("hostname", None),
}


def test_every_garbled_fact_fixture_has_an_expectation():
    assert sorted(p.name for p in FACTS.iterdir()) == sorted(GARBLED_FACTS)


def _garbled_root(tmp_path, case):
    root = tmp_path / "root"
    shutil.copytree(ROOT, root)
    shutil.copytree(FACTS / case, root, dirs_exist_ok=True)
    (garbled,) = [p for p in (FACTS / case).rglob("*") if p.is_file()]
    return root, "/" + str(garbled.relative_to(FACTS / case))


@pytest.mark.parametrize("case", sorted(GARBLED_FACTS))
def test_a_garbled_fact_is_unknown_with_a_warning_and_the_rest_is_intact(tmp_path, case):
    fact, unknown = GARBLED_FACTS[case]
    root, path = _garbled_root(tmp_path, case)
    honest, _ = _summary()
    answer = agent.handle({"mode": "summary", "top": 3}, agent.LocalSources(str(root)))
    assert answer["ok"], answer
    assert answer[fact] == unknown
    assert [w for w in answer["warnings"] if w.startswith(path + ": ")], answer["warnings"]
    for key in ("hostname", "count", "max", "stats", "port_range", "addresses", "lines"):
        if key != fact:
            assert answer[key] == honest[key], key
    assert answer["summary"]["flows"] == honest["summary"]["flows"] == 11
    if fact in ("count", "max"):
        assert answer["summary"]["fill_pct"] is None
    if fact == "port_range":
        assert answer["summary"]["port_range_size"] is None
        assert {p["pct"] for p in answer["summary"]["port_pressure"]} == {None}
    checked = answer_module.check_answer("fixture", {"mode": "summary"}, answer)
    assert checked.summary.flows == 11


@pytest.mark.parametrize("case", sorted(GARBLED_FACTS))
def test_a_garbled_fact_leaves_a_listing_whole(tmp_path, case):
    root, _path = _garbled_root(tmp_path, case)
    header, *rows = agent.answer_lines({"mode": "list"}, agent.LocalSources(str(root)))
    assert json.loads(header)["rows"] == len(rows) == len(_rows())


def test_a_garbled_ethtool_output_drops_that_interface_only():
    sources = agent.DumpSources(
        {
            "/sys/class/net/eth0/device/driver": "../../../bus/pci/drivers/ena",
            "/sys/class/net/eth1/device/driver": "../../../bus/pci/drivers/ena",
            "$ ethtool -S eth0": "NIC statistics:\n     conntrack_allowance_exceeded: lots\n",
            "$ ethtool -S eth1": "NIC statistics:\n     pps_allowance_exceeded: 2\n",
        }
    )
    warnings = []
    assert agent.read_ena(sources, warnings) == {"eth1": {"pps_allowance_exceeded": 2}}
    assert len(warnings) == 1 and warnings[0].startswith("ethtool -S eth0: ")


@pytest.mark.parametrize(
    "text", ["cpu=0 found=x\n", "cpu=0 insert_failed=-1\n", "cpu=0 drop=" + "9" * 30 + "\n"]
)
def test_a_garbled_conntrack_dash_s_is_unknown_stats(text):
    answer = agent.handle({"mode": "info"}, agent.DumpSources({"$ conntrack -S": text}))
    assert answer["ok"] and answer["stats"] is None
    assert [w for w in answer["warnings"] if w.startswith("conntrack -S: ")]


def test_any_other_error_inside_run_is_an_internal_error_answer(monkeypatch):
    def broken(self, port_range):
        raise RuntimeError("boom")

    monkeypatch.setattr(agent.Summary, "to_json", broken)
    answer = agent.handle({"mode": "summary"}, agent.LocalSources(str(ROOT)))
    assert answer == agent.failure("agent", "internal error: RuntimeError: boom")
    lines = list(agent.answer_lines({"mode": "summary"}, agent.LocalSources(str(ROOT))))
    assert [json.loads(line) for line in lines] == [answer]


def test_a_row_failing_after_the_header_ends_the_answer_with_the_failure(monkeypatch):
    good = agent.Flow.to_json
    seen = []

    def third_fails(self):
        seen.append(1)
        if len(seen) == 3:
            raise KeyError("orig")
        return good(self)

    monkeypatch.setattr(agent.Flow, "to_json", third_fails)
    header, *rest = agent.answer_lines({"mode": "list"}, agent.LocalSources(str(ROOT)))
    assert json.loads(header)["rows"] == 9
    assert len(rest) == 3  # two rows, then the failure instead of the promised seven more
    last = json.loads(rest[-1])
    assert last["ok"] is False and last["error"]["kind"] == "agent"
    assert "row 3 of 9" in last["error"]["message"]


def test_a_parsed_line_always_makes_a_row_that_fits_the_documented_ranges():
    """Mutated real lines: each either is malformed (a ValueError) or makes a strict row."""
    rng = random.Random(11)
    lines = [line for path in LINES for line in _read_lines(path)]
    junk = [
        "99999",
        "-1",
        "9" * 30,
        "0x",
        "type=999",
        "code=x",
        "sport=65536",
        "srckey=zz",
        "packets=" + "9" * 25,
        "timeout=x,",
        "stream_timeout=-3",
        "[X]",
        "\u00b2",
        "use=1",
    ]
    parsed = 0
    for _ in range(5000):
        tokens = rng.choice(lines).split(" ")
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(tokens))
            op = rng.randrange(4)
            if op == 0:
                tokens[i] = tokens[i][: rng.randrange(len(tokens[i]) + 1)]
            elif op == 1:
                tokens.insert(i, rng.choice(tokens))
            elif op == 2:
                tokens[i] = rng.choice(junk)
            else:
                tokens[i] += rng.choice(junk)
        line = " ".join(tokens)
        try:
            flow = agent.Flow.parse(line, OWN)
        except ValueError:
            continue
        parsed += 1
        row = json.loads(agent.encode(flow.to_json()))
        answer_module.check_row(row)  # what the laptop's boundary accepts from an honest box
        for tup in (row["orig"], row["reply"]):
            for key in ("sport", "dport", "id"):
                assert 0 <= tup.get(key, 0) <= 65535, line
            for key in ("type", "code"):
                assert 0 <= tup.get(key, 0) <= 255, line
        for key, value in row.items():
            if isinstance(value, int):
                assert 0 <= value < 2**64, (key, line)
    assert parsed > 100


def test_digits_int_cannot_read_make_a_malformed_line_not_an_error():
    line = (
        (DATA / "lines" / "tcp-snat-assured.txt").read_text().replace("dport=443", "dport=4\u00b2")
    )
    with pytest.raises(agent.Malformed):
        agent.parse_fields(line)
    huge = (
        (DATA / "lines" / "tcp-snat-assured.txt")
        .read_text()
        .replace(" 3599 ", " " + "9" * 5000 + " ")
    )
    answer = agent.handle({"mode": "list"}, agent.DumpSources({agent.TABLE_PROC: huge}))
    assert answer["ok"] and answer["malformed"]["count"] == 1


# ------------------------------------------------------------------ wire format 2


def _no_constant(name):
    raise AssertionError("non-standard JSON constant " + name)


def _wire(request, sources):
    lines = list(agent.answer_lines(request, sources))
    for line in lines:
        assert "\n" not in line
        assert line.isascii(), line
        assert ", " not in line and '": ' not in line  # compact separators
    return [json.loads(line, parse_constant=_no_constant) for line in lines]


def test_a_listing_is_a_header_then_one_line_per_row():
    header, *rows = _wire({"mode": "list", "sort": "dst"}, agent.LocalSources(str(ROOT)))
    answer = agent.handle({"mode": "list", "sort": "dst"}, agent.LocalSources(str(ROOT)))
    assert header["agent"] == agent.AGENT_VERSION == 2
    assert header["rows"] == len(rows) == 9
    assert rows == answer.pop("rows")
    header.pop("rows")
    assert header.pop("seconds") >= 0 and answer.pop("seconds") >= 0
    assert header.pop("cpu") >= 0 and answer.pop("cpu") >= 0
    assert header == answer


def test_an_empty_listing_says_zero_rows():
    (header,) = _wire({"mode": "list", "filters": {"proto": "sctp"}}, agent.LocalSources(str(ROOT)))
    assert header["ok"] and header["rows"] == 0 and header["matched"] == 0


@pytest.mark.parametrize("mode", ["summary", "info"])
def test_summary_and_info_are_the_header_alone(mode):
    (header,) = _wire({"mode": mode}, agent.LocalSources(str(ROOT)))
    assert header["ok"] and "rows" not in header
    assert ("summary" in header) == (mode == "summary")


def test_text_from_the_box_is_printable_and_ascii():
    """The box's own text is sent printable (controls and bidi escaped visibly, which the
    laptop's boundary requires) and ASCII-only on the wire (JSON escapes)."""
    sources = agent.DumpSources({agent.HOSTNAME_PATH: "nat-\u00e9\u202e\x1b[2J\n"})
    raw = list(agent.answer_lines({"mode": "info"}, sources))[0]
    assert raw.isascii() and "\\u00e9" in raw
    assert json.loads(raw)["hostname"] == "nat-\u00e9\\u202e\\x1b[2J"


def test_a_non_finite_number_is_never_written(monkeypatch):
    monkeypatch.setattr(agent, "_percent", lambda part, whole: float("nan"))
    (line,) = agent.answer_lines({"mode": "summary"}, agent.LocalSources(str(ROOT)))
    answer = json.loads(line, parse_constant=_no_constant)
    assert answer["ok"] is False and answer["error"]["kind"] == "agent"
    assert "Out of range float values are not JSON compliant" in answer["error"]["message"]


def test_percentages_are_finite_or_null():
    assert agent._percent(10**400, 3) is None
    assert math.isfinite(agent._percent(2**64 - 1, 1))
    assert agent._percent(1, 0) is None and agent._percent(-1, 5) is None
    assert agent._percent(3, 4) == 75.0


def _main(monkeypatch, stdin, sources=None):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "stdout", out)
    status = agent.main(sources)
    return status, out.getvalue()


def test_main_writes_the_wire_lines_newline_terminated(monkeypatch):
    status, text = _main(monkeypatch, b'{"mode": "list"}', agent.LocalSources(str(ROOT)))
    assert status == 0 and text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert json.loads(lines[0])["rows"] == len(lines) - 1 == 9


@pytest.mark.parametrize(
    ("stdin", "says"),
    [
        (b"not json", "request is not JSON"),
        (b"\xff\xfe{}", "request is not JSON"),
        (b"[" * 100000, "request is not JSON"),
        (b'{"mode": NaN}', "mode: "),
        (b"[1, 2]", "must be a JSON object"),
        (b'"list"', "must be a JSON object"),
        (b'{"mode": "info", "pad": "' + b"x" * agent.MAX_REQUEST_BYTES + b'"}', "over 1048576"),
    ],
    ids=["prose", "not-utf8", "deep", "nan", "array", "string", "over-1MiB"],
)
def test_main_answers_a_bad_request_line(monkeypatch, stdin, says):
    status, text = _main(monkeypatch, stdin, agent.LocalSources(str(ROOT)))
    assert status == 0
    (line,) = text.splitlines()
    answer = json.loads(line)
    assert answer["error"]["kind"] == "bad_request"
    assert says in answer["error"]["message"]


def test_an_empty_request_is_the_default_listing(monkeypatch):
    status, text = _main(monkeypatch, b" \n", agent.LocalSources(str(ROOT)))
    assert json.loads(text.split("\n")[0])["rows"] == 9


def test_main_writes_in_large_chunks():
    class Recorder(io.StringIO):
        sizes = []

        def write(self, text):
            self.sizes.append(len(text))
            return super().write(text)

    out = Recorder()
    lines = ["x" * 99] * 1000
    agent.write_lines(out, lines, chunk=10000)
    assert out.getvalue() == "\n".join(lines) + "\n"
    assert len(out.sizes) == 10 and min(out.sizes) == 10000


def test_main_stops_quietly_when_the_reader_goes_away(monkeypatch):
    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"mode": "list"}')))
    monkeypatch.setattr(sys, "stdout", Gone())
    assert agent.main(agent.LocalSources(str(ROOT))) == 1


def test_the_agent_file_answers_a_bad_request_as_a_script():
    """The real entry point, as the box runs it (a bad request reads no table)."""
    big = b'{"pad": "' + b"x" * (agent.MAX_REQUEST_BYTES + 10) + b'"}'
    for stdin, says in ((b'{"top": "x"}', "top: "), (big, "over 1048576 bytes")):
        done = subprocess.run(
            [sys.executable, agent.__file__], input=stdin, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == b""
        (line,) = done.stdout.splitlines()
        assert json.loads(line)["error"]["kind"] == "bad_request"
        assert says in json.loads(line)["error"]["message"]


def test_no_table_says_what_to_do(tmp_path):
    answer = agent.handle({"mode": "list"}, agent.LocalSources(str(tmp_path)))
    assert answer["ok"] is False
    assert answer["error"]["kind"] == "no_table"
    assert "modprobe nf_conntrack" in answer["error"]["message"]


def test_old_ip_conntrack_file_is_read_when_nf_conntrack_is_absent(tmp_path):
    old = tmp_path / "proc" / "net" / "ip_conntrack"
    old.parent.mkdir(parents=True)
    old.write_text((DATA / "lines" / "ip-conntrack-old.txt").read_text())
    answer = agent.handle({"mode": "list"}, agent.LocalSources(str(tmp_path)))
    assert answer["source"] == agent.TABLE_OLD
    assert answer["count"] == 1
    assert answer["rows"][0]["reply"]["dport"] == 61000


def test_raw_dump_round_trip():
    files = {agent.TABLE_PROC: "x\n", agent.MAX_PATH: "65536\n"}
    text = "".join(f"{agent.RAW_MARK}file {k}\n{v}" for k, v in files.items())
    text += f"{agent.RAW_MARK}cmd conntrack -L -o extended\nline\n"
    parsed = agent.split_raw_dump(text)
    assert parsed == {**files, "$ conntrack -L -o extended": "line\n"}


def test_raw_command_is_a_constant_without_user_input():
    assert agent.RAW_COMMAND.startswith("sh -c '")
    assert agent.RAW_COMMAND.count("'") == 2


def test_summary_memory_is_bounded_by_counter_capacity():
    counter = agent.TopCounter(capacity=100)
    for i in range(10_000):
        counter.add(f"198.18.{i // 256}.{i % 256}")
        counter.add("203.0.113.5")
    assert len(counter.counts) <= 100
    assert counter.top(1) == [("203.0.113.5", 10_000)]
    assert counter.error >= 1


def test_agent_is_stdlib_only_python_3_6_syntax():
    """The agent runs on the box's own python3 (3.6+) with nothing installed."""
    import ast
    import sys

    source = Path(agent.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.module != "__future__", "__future__ imports need Python 3.7"
            imported.add((node.module or "").split(".")[0])
    imported.discard("natfleet")  # its own box-side modules (remote.AGENT_MODULES), lazily
    assert imported and imported <= set(sys.stdlib_module_names), imported
    newer_than_3_6 = {"dataclasses", "contextvars", "zoneinfo", "graphlib", "tomllib"}
    assert imported.isdisjoint(newer_than_3_6)


def test_stats_fall_back_to_conntrack_dash_s():
    text = (DATA / "conntrack-S.txt").read_text()
    facts = agent.host_facts(agent.DumpSources({"$ conntrack -S": text}))
    assert facts["stats"]["insert_failed"] == 7
    assert facts["stats"]["drop"] == 2
    assert facts["stats"]["early_drop"] == 1
    assert agent.host_facts(agent.DumpSources())["stats"] is None  # unknown, not zero


def test_top_counter_error_bounds_every_count():
    import random

    rng = random.Random(7)
    for _ in range(200):
        counter = agent.TopCounter(capacity=4)
        truth: dict[str, int] = {}
        for key in rng.choices("abcdefghij", k=rng.randrange(5, 60)):
            counter.add(key)
            truth[key] = truth.get(key, 0) + 1
        for key, count in truth.items():
            assert 0 <= count - counter.counts.get(key, 0) <= counter.error


def test_failing_conntrack_command_is_an_error_not_an_empty_table(tmp_path, monkeypatch):
    fake = tmp_path / "conntrack"
    fake.write_text(
        "#!/bin/sh\necho 'conntrack v1.4.7 (conntrack-tools): Operation failed: "
        "Operation not permitted' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")

    class NoProcTable(agent.LocalSources):
        def exists(self, path):
            return path != agent.TABLE_PROC and super().exists(path)

    answer = agent.handle({"mode": "summary"}, NoProcTable("/"))
    assert answer["ok"] is False
    assert answer["error"]["kind"] == "permission"
    assert "Operation not permitted" in answer["error"]["message"]


def test_name_lookups_keep_to_their_budget_and_never_hold_the_exit():
    import subprocess
    import sys
    import time

    script = (
        "import socket, time\n"
        "def slow(addr):\n"
        "    time.sleep(2)\n"
        "    return ('name', [], [addr])\n"
        "socket.gethostbyaddr = slow\n"
        "from natfleet import agent\n"
        "addrs = ['198.51.100.%d' % i for i in range(64)]\n"
        "assert agent.resolve_names(addrs, 0.3) == {}\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert time.monotonic() - started < 1.8  # not 64 lookups x 2 s / 16 threads


def test_name_lookups_keep_what_resolved_in_time(monkeypatch):
    """Fast lookups come back named, slow ones (past the budget) and failures stay numbers."""
    import time

    def lookup(addr):
        if addr.endswith(".9"):
            time.sleep(2)  # past the budget
        if addr.endswith(".8"):
            raise OSError("no PTR")
        return ("host-" + addr.rsplit(".", 1)[1] + ".example", [], [addr])

    monkeypatch.setattr(agent.socket, "gethostbyaddr", lookup)
    addrs = [f"198.51.100.{i}" for i in (1, 2, 8, 9)] + ["", None]
    started = time.monotonic()
    assert agent.resolve_names(addrs, 0.5) == {
        "198.51.100.1": "host-1.example",
        "198.51.100.2": "host-2.example",
    }
    assert time.monotonic() - started < 1.5


def test_bytes_that_are_not_text_on_stdin_are_malformed_lines():
    import os
    import subprocess
    import sys

    good = (DATA / "lines" / "tcp-snat-assured.txt").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "natfleet", "local", "-n", "--input", "-"],
        input=good + b"ipv4 2 tcp 6 1 ESTABLISHED src=\xff\xfe dst=1.2.3.4\n" + good,
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    notice = b"1 malformed conntrack line(s) skipped (of 3 read"
    assert (done.stdout + done.stderr).count(notice) == 1  # said once, where it is said
    assert done.stdout.count(b"203.0.113.5:443") == 2  # both good lines listed


def test_every_row_of_the_fixture_lines_passes_the_boundary():
    for path in LINES:
        for line in _read_lines(path):
            row = agent.Flow.parse(line, OWN).to_json()
            assert answer_module.check_row(json.loads(agent.encode(row))).shown()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("src=192.168.1.10 dst=203.0.113.5", "src=2001:db8::10 dst=203.0.113.5"),  # mixed
        ("ipv4     2 tcp", "ipv6     10 tcp"),  # ipv6 with IPv4 addresses
        ("zone=0", "zone=65536"),  # zones are 16 bits
        ("mark=0", "mark=4294967296"),  # marks are 32 bits
        ("use=2", "use=99999999999"),
    ],
)
def test_a_line_the_boundary_would_refuse_is_malformed_here(old, new):
    line = (DATA / "lines" / "tcp-snat-assured.txt").read_text()
    assert old in line
    with pytest.raises(agent.Malformed):
        agent.parse_fields(line.replace(old, new, 1))


def test_icmp_and_gre_fields_are_read_only_for_their_protocols():
    """Another protocol's type=/code=/id= are plain extra fields; its srckey=0x.. is no
    key=number field at all, so that line is malformed."""
    icmp = (DATA / "lines" / "icmp-snat.txt").read_text().replace(" 1 29 ", " 29 29 ")
    row = agent.Flow.parse(icmp, OWN).to_json()
    assert sorted(row["orig"]) == sorted(row["reply"]) == ["dst", "src"], row
    assert answer_module.check_row(row).proto == "29"
    gre = (DATA / "lines" / "gre-timeouts.txt").read_text()
    with pytest.raises(agent.Malformed):
        agent.parse_fields(gre.replace("timeout=0, stream_timeout=0 ", "").replace(" 47 ", " 29 "))


def test_a_repeated_flag_is_listed_once():
    line = (DATA / "lines" / "tcp-snat-assured.txt").read_text()
    flow = agent.Flow.parse(
        line.replace("[ASSURED]", "[ASSURED] [ASSURED] [ASSURED] [ASSURED] [ASSURED]"), OWN
    )
    assert flow.to_json()["flags"] == flow.flags() == ["ASSURED"]


def test_answers_about_many_garbled_interfaces_keep_warnings_bounded():
    files = {}
    for i in range(300):
        files[f"/sys/class/net/eth{i}/device/driver"] = "../../../bus/pci/drivers/ena"
        files[f"$ ethtool -S eth{i}"] = "conntrack_allowance_exceeded: x\n"
    answer = agent.handle({"mode": "info"}, agent.DumpSources(files))
    assert len(answer["warnings"]) == agent.WARNINGS_MAX
    assert answer["warnings"][-1] == "and 201 more warnings"
    answer_module.check_answer("dump", {"mode": "info"}, answer)


def test_a_strange_ena_interface_name_is_left_out_with_a_warning():
    sources = agent.DumpSources(
        {
            "/sys/class/net/eth\x1b[2J/device/driver": "../../../bus/pci/drivers/ena",
            "$ ethtool -S eth\x1b[2J": "pps_allowance_exceeded: 1\n",
        }
    )
    warnings = []
    assert agent.read_ena(sources, warnings) == {}
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "request_",
    [{"mode": "list"}, {"mode": "list", "limit": 3}, {"mode": "summary"}, {"mode": "info"}],
    ids=repr,
)
def test_main_output_is_what_the_laptop_reader_takes(monkeypatch, request_):
    """The wire format end to end: main()'s bytes, in small pieces, into answer.py's reader."""
    _status, text = _main(monkeypatch, json.dumps(request_).encode(), agent.LocalSources(str(ROOT)))
    reader = answer_module.AnswerReader("fixture", request_, cap=1 << 20)
    data = text.encode("ascii")
    for start in range(0, len(data), 77):
        reader.feed(data[start : start + 77])
    checked = reader.finish()
    expected = agent.handle(request_, agent.LocalSources(str(ROOT)))
    assert [f.to_json() for f in checked.flows] == [
        agent.Flow.from_json(r).to_json() for r in expected.get("rows", [])
    ]
    assert checked.facts.hostname == "natbox"


def test_a_bad_request_reaches_the_laptop_as_that_error(monkeypatch):
    _status, text = _main(monkeypatch, b'{"top": "x"}', agent.LocalSources(str(ROOT)))
    reader = answer_module.AnswerReader("fixture", {"mode": "list"}, cap=1 << 20)
    reader.feed(text.encode("ascii"))
    with pytest.raises(Exception) as caught:
        reader.finish()
    assert getattr(caught.value, "kind", None) == "bad_request"
    assert "top: must be an integer" in str(caught.value)


# --------------------------------------------------------------------------- own session

OWN_SESSION = DATA / "own-session"  # a box seen from an agent run by sudo under sshd
SESSION = {"src": "198.19.255.1", "sport": 41704, "dst": "198.19.255.11", "dport": 22}
ALL_KINDS = {"mode": "list", "filters": {"nat": list(agent.NAT_KINDS)}}


def _session_copy(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(OWN_SESSION, root, symlinks=True)
    return root


def _entries(root: Path) -> list[str]:
    return (root / "proc/net/nf_conntrack").read_text().splitlines()


def _kept(answer: dict) -> set:
    return {(r["proto"], r["orig"]["src"], r["orig"].get("sport")) for r in answer["rows"]}


def test_the_remote_agent_leaves_out_the_ssh_session_it_runs_under():
    sources = agent.LocalSources(str(OWN_SESSION))
    answer = agent.handle(ALL_KINDS, sources, skip_own=True)
    assert answer["own_session"] == {**SESSION, "proto": "tcp"}
    assert answer["own_flows"] == 1
    assert answer["matched"] == len(answer["rows"]) == len(_entries(OWN_SESSION)) - 1
    kept = _kept(answer)
    assert ("tcp", SESSION["src"], SESSION["sport"]) not in kept
    assert ("udp", SESSION["src"], SESSION["sport"]) in kept  # the same ports, but not TCP
    assert ("tcp", SESSION["src"], 41650) in kept  # an earlier session's TIME_WAIT stays
    assert ("tcp", SESSION["src"], 41680) in kept  # another session, someone else's
    summary = agent.handle({"mode": "summary"}, sources, skip_own=True)
    assert summary["own_flows"] == 1
    assert summary["summary"]["flows"] == len(_entries(OWN_SESSION)) - 1
    from_mgmt = sum(f"src={SESSION['src']} " in line for line in _entries(OWN_SESSION))
    assert dict(map(tuple, summary["summary"]["top_sources"]))[SESSION["src"]] == from_mgmt - 1


def test_in_process_callers_count_everything_and_say_no_session():
    for request in (ALL_KINDS, {"mode": "summary"}, {"mode": "info"}):
        answer = agent.handle(request, agent.LocalSources(str(OWN_SESSION)))
        assert (answer["own_session"], answer["own_flows"]) == (None, 0)
    answer = agent.handle(ALL_KINDS, agent.LocalSources(str(OWN_SESSION)))
    assert len(answer["rows"]) == len(_entries(OWN_SESSION))


def test_main_is_the_remote_agent_and_says_what_it_left_out(monkeypatch):
    _status, text = _main(
        monkeypatch, json.dumps(ALL_KINDS).encode(), agent.LocalSources(str(OWN_SESSION))
    )
    header, *rows = [json.loads(line) for line in text.splitlines()]
    assert header["own_session"] == {**SESSION, "proto": "tcp"} and header["own_flows"] == 1
    assert header["rows"] == len(rows) == len(_entries(OWN_SESSION)) - 1
    reader = answer_module.AnswerReader("fixture", ALL_KINDS, cap=1 << 20)
    reader.feed(text.encode("ascii"))
    assert len(reader.finish().flows) == len(rows)  # the boundary takes the new header keys


def test_the_session_is_the_socket_the_sshd_serves_not_one_it_forwards(tmp_path):
    root = _session_copy(tmp_path)
    # the session's sshd also holds a forwarded connection: 198.19.255.11:45000 -> :9000
    (root / "proc/4238/fd/9").symlink_to("socket:[470100]")
    with open(root / "proc/net/tcp", "a") as tcp:
        tcp.write(
            "   5: 0BFF13C6:AFC8 0A0112C6:2328 01 00000000:00000000 00:00000000 00000000     0"
            "        0 470100 1 0000000000000000 20 4 30 10 -1\n"
        )
    assert agent.find_own_session(agent.LocalSources(str(root))) == (
        SESSION["dst"], 22, SESSION["src"], SESSION["sport"]
    )  # fmt: skip
    # two sessions it serves: which one is this agent's cannot be told
    (root / "proc/4238/fd/10").symlink_to("socket:[466001]")
    assert agent.find_own_session(agent.LocalSources(str(root))) is None


@pytest.mark.parametrize(
    "change",
    ["no-sshd", "garbled-stat", "parent-loop", "no-tcp-table", "sshd-without-socket"],
)
def test_no_session_to_tell_leaves_every_entry_in(tmp_path, change):
    root = _session_copy(tmp_path)
    proc = root / "proc"
    if change == "no-sshd":  # e.g. run by hand under a terminal multiplexer
        for pid in ("4238", "4230", "812"):
            stat = proc / pid / "stat"
            stat.write_text(stat.read_text().replace("(sshd)", "(tmux: server)"))
    elif change == "garbled-stat":
        (proc / "4239/stat").write_text("4239 sh S\n")
    elif change == "parent-loop":  # the walk ends, whatever /proc says
        (proc / "4239/stat").write_text("4239 (sh) S 4242 4239 4239 0\n")
    elif change == "no-tcp-table":
        (proc / "net/tcp").unlink()
    else:
        for pid in ("4238", "4230"):
            shutil.rmtree(proc / pid / "fd")
    answer = agent.handle(ALL_KINDS, agent.LocalSources(str(root)), skip_own=True)
    assert answer["ok"] is True and answer["warnings"] == []
    assert (answer["own_session"], answer["own_flows"]) == (None, 0)
    assert len(answer["rows"]) == len(_entries(root))


def test_an_ipv6_session_is_found_in_tcp6():
    local, remote = "2001:db8:ff::11", "2001:db8:ff::1"

    def word_hex(addr: str) -> str:  # /proc/net/tcp6: each 32-bit word in host byte order
        raw = ipaddress.ip_address(addr).packed
        return "".join(
            f"{int.from_bytes(raw[i : i + 4], sys.byteorder):08X}" for i in range(0, 16, 4)
        )

    line = (
        f"ipv6     10 tcp      6 431999 ESTABLISHED src={remote} dst={local} sport=50022 "
        f"dport=22 src={local} dst={remote} sport=22 dport=50022 [ASSURED] mark=0 zone=0 use=2"
    )
    files = {
        "/proc/self/stat": "77 (python3) S 70 77 77 0\n",
        "/proc/70/stat": "70 (sshd-session) S 1 70 70 0\n",
        "/proc/70/fd/3": "socket:[9001]",
        "/proc/net/tcp6": (
            "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid "
            "timeout inode\n"
            f"   0: {word_hex(local)}:0016 {word_hex(remote)}:C366 01 00000000:00000000 "
            "00:00000000 00000000 0 0 9001 1 0 20 4 30 10 -1\n"
        ),
        agent.TABLE_PROC: line + "\n" + line.replace("50022", "50023") + "\n",
    }
    answer = agent.handle(ALL_KINDS, agent.DumpSources(files), skip_own=True)
    assert answer["own_session"] == {
        "src": remote, "sport": 50022, "dst": local, "dport": 22, "proto": "tcp"
    }  # fmt: skip
    assert answer["own_flows"] == 1 and [r["orig"]["sport"] for r in answer["rows"]] == [50023]


def test_tcp_addresses_in_host_byte_order():
    packed = bytes([198, 19, 255, 11])
    word = f"{int.from_bytes(packed, sys.byteorder):08X}"
    assert agent.parse_tcp_address(word + ":0016") == ("198.19.255.11", 22)
    for bad in ("0BFF13C6", "0BFF13C6:16", "0BFF13G6:0016", "0BFF13:0016", ":0016"):
        with pytest.raises(ValueError):
            agent.parse_tcp_address(bad)


# --------------------------------------------------------------------------- sort ties

TIES = DATA / "sort-ties.txt"  # entries equal on one key or more, in no order


def _sorted_tuples(sort: str, lines: list[str]) -> list[tuple]:
    table = agent.DumpSources({agent.TABLE_PROC: "".join(lines)})
    rows = agent.handle({**ALL_KINDS, "sort": sort}, table)["rows"]
    return [json.dumps(r, sort_keys=True) for r in rows]


@pytest.mark.parametrize("sort", agent.SORT_KEYS)
def test_every_sort_orders_ties_the_same_whatever_the_table_order(sort):
    lines = TIES.read_text().splitlines(True)
    first = _sorted_tuples(sort, lines)
    shuffler = random.Random(7)
    for _ in range(20):
        shuffler.shuffle(lines)
        assert _sorted_tuples(sort, lines) == first


def _key_of(row: dict, name: str):
    flow = agent.Flow.from_json(row)
    (saddr, sport), _nat, (daddr, dport) = flow.shown()
    src = (agent.address_key(saddr), int(sport or -1))
    dst = (agent.address_key(daddr), int(dport or -1))
    return {
        "src": src + dst + (flow.pnum,),
        "dst": dst + src + (flow.pnum,),
        "src-port": (src[1], src[0]) + dst + (flow.pnum,),
        "dst-port": (dst[1], dst[0]) + src + (flow.pnum,),
        "state": (flow.display_state(),) + src + dst + (flow.pnum,),
    }[name]


@pytest.mark.parametrize("sort", agent.SORT_KEYS)
def test_ties_go_by_the_next_keys(sort):
    """dst-port, then the destination address, the source address, its port, the protocol
    (and likewise for every key): checked pair by pair against that order."""
    rows = agent.handle(
        {**ALL_KINDS, "sort": sort}, agent.DumpSources({agent.TABLE_PROC: TIES.read_text()})
    )["rows"]
    keys = [_key_of(row, sort) for row in rows]
    assert keys == sorted(keys)
    firsts = [k[0] for k in keys]
    assert len(set(firsts)) < len(firsts)  # the table has ties on the first key
    nexts = [k[:2] for k in keys]
    assert len(set(nexts)) < len(nexts)  # and on the first two


@pytest.mark.parametrize("sort", agent.SORT_KEYS)
def test_the_fleet_merge_orders_ties_like_one_box(sort):
    """natfleet.aggregate sorts every box's rows with agent.sort_key: two boxes holding
    halves of one table merge into the order one box with the whole table gives."""
    from natfleet.aggregate import merge_flows
    from natfleet.models import HostResult, Target

    lines = TIES.read_text().splitlines(True)
    request = {**ALL_KINDS, "sort": sort}

    def box(name: str, part: list[str]) -> HostResult:
        answer = agent.handle(request, agent.DumpSources({agent.TABLE_PROC: "".join(part)}))
        return HostResult(Target(name=name), answer_module.check_answer(name, request, answer))

    merged = merge_flows([box("a", lines[1::2]), box("b", lines[::2])], sort=sort)
    assert [json.dumps(f.to_json(), sort_keys=True) for f in merged.flows] == _sorted_tuples(
        sort, lines
    )


def test_the_agent_says_its_cpu_seconds_workers_included(tmp_path, monkeypatch):
    """``cpu`` is this process's and its workers' CPU time over the answer: a summary
    spread over two workers reports the parsing they did too."""
    monkeypatch.setattr(agent.threading, "active_count", lambda: 1)  # (fork is safe here)
    line = (DATA / "lines" / "udp-assured.txt").read_text().rstrip("\n")
    path = tmp_path / "big.txt"
    path.write_text("".join(line.replace("5356", str(1024 + i)) + "\n" for i in range(60000)))
    before = agent.os.times()
    answer = agent.handle({"mode": "summary", "jobs": 2}, agent.DumpSources(table_file=str(path)))
    after = agent.os.times()
    assert answer["summary"]["flows"] == 60000
    workers = after.children_user + after.children_system
    workers -= before.children_user + before.children_system
    everything = workers + after.user + after.system - before.user - before.system
    assert workers > 0  # the workers' time is counted once they are reaped
    assert workers - 0.011 <= answer["cpu"] <= everything + 0.011
    for mode in ("info", "list"):
        cpu = agent.handle({"mode": mode}, agent.LocalSources(str(ROOT)))["cpu"]
        assert isinstance(cpu, float) and 0 <= cpu < 5


@pytest.mark.parametrize("bad", [-1, "0.5", float("nan"), 1e9, True])
def test_the_boundary_takes_the_agents_cpu_and_refuses_a_bad_one(bad):
    answer = agent.handle({"mode": "summary"}, agent.LocalSources(str(ROOT)))
    checked = answer_module.check_answer("fixture", {"mode": "summary"}, answer)
    assert checked.cpu == answer["cpu"] and checked.to_json()["cpu"] == answer["cpu"]
    del answer["cpu"]  # an older agent says nothing: unknown, not 0
    assert answer_module.check_answer("fixture", {"mode": "summary"}, answer).cpu is None
    answer["cpu"] = bad
    with pytest.raises(answer_module.AnswerError, match="cpu"):
        answer_module.check_answer("fixture", {"mode": "summary"}, answer)
