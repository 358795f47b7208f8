"""The agent's parser, classifier, filters and summary, on real kernel lines in tests/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natfleet import agent
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
    assert example["text"] == text.rstrip("\n")
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


def test_bad_requests_are_answers_not_exceptions():
    sources = agent.LocalSources(str(ROOT))
    for request in (
        {"mode": "nope"},
        {"sort": "size"},
        {"filters": {"proto": "tcpx"}},
        {"filters": {"src": ["not-an-address"]}},
        {"filters": {"nat": ["masq"]}},
        [],
    ):
        answer = agent.handle(request, sources)
        assert answer["ok"] is False
        assert answer["error"]["kind"] == "bad_request"


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
    assert b"1 malformed conntrack line(s) skipped (of 3 read" in done.stdout
