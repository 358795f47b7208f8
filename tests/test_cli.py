"""The command line: help text, exit codes, error messages, netstat-nat layout."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import pytest

from natfleet import agent, api
from natfleet.aggregate import SUMMARY_COLUMNS
from natfleet.answer import check_answer
from natfleet.cli import build_parser, main
from natfleet.commands import conns as conns_cmd
from natfleet.commands import local as local_cmd
from natfleet.commands import summary as summary_cmd
from natfleet.invocation import root_command
from natfleet.models import HostResult, Target
from natfleet.output import text_width
from tests import boxes
from tests.conftest import DATA

ROOT_TABLE = str(DATA / "root" / "proc" / "net" / "nf_conntrack")
README = Path(__file__).resolve().parents[1] / "README.md"


def commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", commands())
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text.lower()
    assert f"natfleet {command}" in text or "natfleet lab" in text


def test_readme_lists_every_command():
    readme = README.read_text()
    for command in commands():
        assert f"`{command}" in readme, f"README does not mention {command}"


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "--bogus"])
    assert exit_info.value.code == 2
    assert "see 'natfleet local --help'" in capsys.readouterr().err


def test_bad_sort_key_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "-r", "size"])
    assert exit_info.value.code == 2
    assert "-r takes src, dst, src-port, dst-port, state, not 'size'" in capsys.readouterr().err


def test_bad_protocol_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["local", "-n", "-p", "tcpx", "--input", ROOT_TABLE])
    assert done.value.code == 2
    assert "unknown protocol 'tcpx'" in capsys.readouterr().err


def test_missing_input_file_is_a_usage_error(capsys):
    assert main(["local", "-n", "--input", "/nonexistent/table"]) == 2
    assert "No such file" in capsys.readouterr().err


def test_netstat_layout_matches_the_golden_file(capsys):
    assert main(["local", "-nN", "--input", ROOT_TABLE]) == 0
    expected = (DATA / "netstat" / "root-nN.txt").read_text()
    assert capsys.readouterr().out == expected


def test_header_off_and_untranslated_layout(capsys):
    assert main(["local", "-n", "-o", "-R", "--input", ROOT_TABLE]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "tcp   192.0.2.10:33000               198.18.1.10:22                 LAST_ACK",
        "tcp   192.168.1.10:50022             192.168.1.1:22                 CLOSE_WAIT",
    ]


def test_long_values_widen_the_row_instead_of_being_cut(tmp_path, capsys):
    line = (
        "ipv6     10 tcp      6 3600 ESTABLISHED src=2001:0db8:1111:2222:3333:4444:5555:6666 "
        "dst=2001:0db8:aaaa:bbbb:cccc:dddd:eeee:ffff sport=40000 dport=443 "
        "src=2001:0db8:aaaa:bbbb:cccc:dddd:eeee:ffff dst=2001:0db8:ffff:0000:0000:0000:0000:0001 "
        "sport=443 dport=40001 mark=0 zone=0 use=2\n"
    )
    table = tmp_path / "t.txt"
    table.write_text(line)
    assert main(["local", "-nN", "-o", "--input", str(table)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [
        "tcp",
        "[2001:db8:1111:2222:3333:4444:5555:6666]:40000",
        "[2001:db8:ffff::1]:40001",
        "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:443",
        "ESTABLISHED",
    ]


def test_malformed_lines_footer_and_stderr(tmp_path, capsys):
    good = (DATA / "lines" / "tcp-snat-assured.txt").read_text()
    bad = (DATA / "malformed" / "truncated-end.txt").read_text()
    table = tmp_path / "t.txt"
    table.write_text(good + bad + good)
    assert main(["local", "-n", "--input", str(table)]) == 0
    captured = capsys.readouterr()  # not a terminal: said once, on stderr
    assert "natfleet: 1 malformed conntrack line(s) skipped (of 3 read" in captured.err
    assert "malformed" not in captured.out
    assert "malformed line 2: 'ipv4" in captured.err


def test_malformed_lines_footer_on_a_terminal_is_said_once_under_the_table(
    tmp_path, capsys, monkeypatch
):
    good = (DATA / "lines" / "tcp-snat-assured.txt").read_text()
    bad = (DATA / "malformed" / "truncated-end.txt").read_text()
    table = tmp_path / "t.txt"
    table.write_text(good + bad)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert main(["local", "-n", "--input", str(table)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].startswith("natfleet: 1 malformed conntrack line(s)")
    assert "skipped" not in captured.err and "malformed line 2" in captured.err


def test_json_rows_carry_the_contract_fields(capsys):
    assert main(["local", "-n", "--format", "json", "--input", ROOT_TABLE]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["natfleet"], doc["command"], doc["errors"]) == (1, "local", [])
    assert doc["source"] == ROOT_TABLE and doc["count"] == 11 and doc["malformed"] == 0
    rows = doc["rows"]
    assert len(rows) == 9
    for row in rows:
        assert {"proto", "state", "status", "flags", "nat", "orig", "reply"} <= set(row)
        assert {"src", "dst"} <= set(row["orig"]) and {"src", "dst"} <= set(row["reply"])


def test_csv_has_a_header_and_one_line_per_row(capsys):
    assert main(["local", "-n", "--format", "csv", "--input", ROOT_TABLE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "proto,l3,nat,status,state,flags,src,sport,nat_ip,nat_port,dst,dport,timeout,"
        "src_name,nat_name,dst_name"
    )
    assert len(lines) == 10


def test_unreadable_table_says_to_use_sudo(monkeypatch, capsys):
    class Denied(agent.LocalSources):
        def open_lines(self, path):
            raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(local_cmd, "sources_for", lambda path: Denied("/"))
    assert main(["local", "-n"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot read /proc/net/nf_conntrack: permission denied")
    assert f"{root_command()} local -n" in err


def test_fleet_commands_over_saved_dumps(tmp_path, capsys):
    second = tmp_path / "second.txt"
    second.write_text((DATA / "lines" / "ipv6-tcp-snat.txt").read_text())
    assert (
        main(["conns", "-n", "--format", "json", "--input", ROOT_TABLE, "--input", str(second)])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert len(rows) == 10 and doc["command"] == "conns"
    assert {r["target"]["host"] for r in rows} == {ROOT_TABLE, str(second)}
    assert [box["rows"] for box in doc["boxes"]] == [9, 1]
    assert main(["summary", "--format", "json", "--input", ROOT_TABLE, "--input", str(second)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [b["summary"]["flows"] for b in summary["rows"]] == [11, 1]
    assert summary["total"]["flows"] == 12 and summary["errors"] == []


def test_a_failed_target_is_a_row_and_exit_code_3(capsys):
    # nothing listens on 127.0.0.1:9, so the SSH connection is refused at once
    argv = ["summary", "--input", ROOT_TABLE, "--host", "root@127.0.0.1:9", "--timeout", "5"]
    code = main(argv)
    out = capsys.readouterr()
    assert code == 3
    assert re.search(
        r"127.0.0.1:9 .*ERROR connect: connection refused by root@127.0.0.1:9", out.out
    )
    assert re.search(r"^TOTAL \(1/2\) ", out.out, re.M)
    assert "natfleet: 127.0.0.1:9: connect: connection refused" in out.err  # not a terminal


def test_a_failed_target_on_a_terminal_is_said_once(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    argv = ["conns", "-n", "--input", ROOT_TABLE, "--host", "root@127.0.0.1:9", "--timeout", "5"]
    assert main(argv) == 3
    out = capsys.readouterr()
    assert sum("connection refused" in line for line in out.out.splitlines()) == 1
    assert "connection refused" not in out.err


def test_no_box_answered_has_no_total(capsys):
    argv = ["summary", "--host", "root@127.0.0.1:9", "--host", "root@127.0.0.1:7"]
    assert main([*argv, "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "TOTAL" not in out and " 0 " not in out and out.count("ERROR connect") == 2
    assert main([*argv, "--timeout", "5", "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"] is None and doc["rows"] == [] and len(doc["errors"]) == 2


def test_no_nat_instance_found_is_an_error_that_says_what_to_do(session, capsys):
    assert main(["summary", "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert "no NAT instances found" in err and "--host" in err


def test_limit_and_top_must_be_positive(capsys):
    for argv in (["local", "--limit", "-1"], ["summary", "--top", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "must be more than 0" in capsys.readouterr().err


def test_bad_protocol_is_a_usage_error_before_any_box_is_read(capsys):
    with pytest.raises(SystemExit) as done:
        main(["conns", "-n", "-p", "tcpx", "--host", "root@127.0.0.1:9"])
    assert done.value.code == 2
    assert "unknown protocol 'tcpx'" in capsys.readouterr().err


def test_dash_L_is_a_filter_and_dash_dash_local_a_target():
    """-L (connections to the box itself) and --local (read this machine) are two options."""
    from natfleet.commands.flowopts import request_from_args
    from natfleet.commands.targetopts import resolve_targets_from_args

    table = str(DATA / "tables" / "lab-box.txt")
    args = build_parser().parse_args(["conns", "-n", "-L", "--input", table])
    assert request_from_args(args)["filters"]["nat"] == ["local"]
    assert [t.kind for t in resolve_targets_from_args(args)[0]] == ["file"]
    args = build_parser().parse_args(["conns", "-n", "--local"])
    assert sorted(request_from_args(args)["filters"]["nat"]) == ["dnat", "snat", "snat+dnat"]
    assert [t.kind for t in resolve_targets_from_args(args)[0]] == ["local"]


# --- output for a 120-column terminal and for pipes (issue 12) ------------------------------

LAB_TABLE = str(DATA / "tables" / "lab-box.txt")
LAB_IDS = ("i-7673c17c4d91bcb80", "i-3517218025a36651d", "i-e3f9087d88a9ea02b")


def lab_like_targets(table: str) -> list[Target]:
    """Three boxes named as AWS discovery names the lab's (Name and instance ID), read from
    a saved table (the lab's own, or the fixture root's)."""
    return [
        Target(f"nflab-box{i}", kind="file", path=table, instance_id=LAB_IDS[i - 1])
        for i in (1, 2, 3)
    ]


@pytest.fixture(params=[LAB_TABLE, ROOT_TABLE], ids=["lab-box", "root"])
def fleet(request, monkeypatch):
    """conns and summary reading three realistically named boxes (no SSH, no AWS)."""
    targets = lab_like_targets(request.param)

    def run(args, req, *_a, **_k):
        return api.read_fleet(targets, req)

    monkeypatch.setattr(conns_cmd, "run_from_args", run)
    monkeypatch.setattr(summary_cmd, "run_from_args", run)
    return request.param


def out_of(capsys, argv: list[str], code: int = 0) -> str:
    assert main(argv) == code
    return capsys.readouterr().out


def assert_fits(text: str, columns: int = 120) -> None:
    lines = text.splitlines()
    assert lines, "no output"
    widest = max(lines, key=text_width)
    assert text_width(widest) <= columns, f"{text_width(widest)} columns: {widest!r}"


TABLE_COMMANDS = [
    ["summary"],
    ["conns", "-nN"],
    ["conns", "-n"],
    ["conns", "-n", "--format", "table"],
]


@pytest.mark.parametrize("argv", TABLE_COMMANDS, ids=" ".join)
def test_default_output_fits_a_120_column_terminal(fleet, capsys, monkeypatch, argv):
    monkeypatch.setenv("COLUMNS", "120")
    out = out_of(capsys, argv)
    assert_fits(out)
    assert "(i-" not in out  # the short label: the Name
    hosts = [line.split()[0] for line in out.splitlines()[1:]]
    assert {"nflab-box1", "nflab-box2", "nflab-box3"} <= set(hosts)


@pytest.mark.parametrize("argv", [["-nN"], ["-n"], ["-n", "--format", "table"]], ids=" ".join)
def test_local_fits_a_120_column_terminal(capsys, monkeypatch, argv):
    monkeypatch.setenv("COLUMNS", "120")
    for table in (LAB_TABLE, ROOT_TABLE):
        out = out_of(capsys, ["local", *argv, "--input", table])
        assert_fits(out)
        assert len(out.splitlines()) > 5


def test_conns_netstat_text_keeps_netstat_nat_widths_in_a_pipe(fleet, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    lines = out_of(capsys, ["conns", "-nN"]).splitlines()
    host = len("nflab-box1 ")
    assert lines[0].index("NATed Address") == host + 6
    assert lines[0].index("NAT-host Address") == host + 6 + 31
    assert lines[0].index("Destination Address") == host + 6 + 62
    wide = out_of(capsys, ["conns", "-nN", "--wide"]).splitlines()
    assert wide[1].startswith("nflab-box1 (i-7673c17c4d91bcb80) ")
    assert len(wide) == len(lines)


def test_conns_netstat_text_narrows_its_address_columns_only_to_fit(fleet, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    wide_terminal = out_of(capsys, ["conns", "-nN"])
    monkeypatch.delenv("COLUMNS")
    assert wide_terminal == out_of(capsys, ["conns", "-nN"])  # it fits: netstat-nat's widths
    monkeypatch.setenv("COLUMNS", "120")
    narrow = out_of(capsys, ["conns", "-nN"])
    assert [line.split() for line in narrow.splitlines()] == [
        line.split() for line in wide_terminal.splitlines()
    ]  # the same cells, in fewer columns


def summary_columns(wide: bool) -> list[str]:
    return [c.header for c in SUMMARY_COLUMNS if c.table and (wide or not c.wide)]


def test_summary_compact_and_wide_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    results = [
        HostResult(t, check_answer(t.label, {"mode": "summary"}, boxes.answer("summary")))
        for t in lab_like_targets(ROOT_TABLE)
    ]
    monkeypatch.setattr(summary_cmd, "run_from_args", lambda *a, **k: results)
    compact = out_of(capsys, ["summary"])
    heads = [h for h in summary_columns(False) if h != "ERROR"]
    assert re.split(r"  +", compact.splitlines()[0]) == heads
    assert compact.splitlines()[-1].startswith("TOTAL (3/3)")
    assert_fits(compact)
    wide = out_of(capsys, ["summary", "--wide"])
    assert re.split(r"  +", wide.splitlines()[0]) == [
        h for h in summary_columns(True) if h != "ERROR"
    ]
    assert "nflab-box1 (i-7673c17c4d91bcb80)" in wide
    assert out_of(capsys, ["summary", "-o", "wide"]) == wide


def test_columns_empty_for_every_row_are_left_out(fleet, capsys):
    head = out_of(capsys, ["conns", "-n", "-R", "--format", "table"]).splitlines()[0]
    assert "NAT HOST" not in head and "SOURCE" in head  # routed rows: no NAT host
    head = out_of(capsys, ["summary"]).splitlines()[0]
    assert "ERROR" not in head  # every box answered
    wide = out_of(capsys, ["conns", "-n", "--format", "table", "--wide"]).splitlines()[0]
    assert {"STATE", "FLAGS", "L3"} <= set(re.split(r"  +", wide))


BAD_CELL = re.compile(  # literals, embedded JSON, joined triples, address:port, 3.9e-05
    r"[{}\[\]]|^(True|False|None)$|^\d+/\d+/\d+$|^(\d+\.){3}\d+:\d+$|^\d+(\.\d+)?e-?\d+$"
)


@pytest.mark.parametrize(
    "argv",
    [["conns", "-n"], ["conns", "-nN", "-p", "udp"], ["summary"], ["local", "-n", "--input"]],
    ids=" ".join,
)
def test_csv_cells_are_plain_values(fleet, capsys, argv):
    if argv[0] == "local":
        argv = [*argv, fleet]
    rows = list(csv.DictReader(io.StringIO(out_of(capsys, [*argv, "--format", "csv"]))))
    assert rows
    for row in rows:
        for key, cell in row.items():
            assert not BAD_CELL.search(cell), f"{key}: {cell!r}"
    if argv[0] == "summary":
        assert {"insert_failed", "drop", "early_drop", "pressure_nat_ip", "pressure_dport"} <= set(
            rows[0]
        )
        assert {"top_source", "top_source_flows"} <= set(rows[0])
        assert all(float(r["fill_pct"] or 0) >= 0 for r in rows)
    else:
        assert {"src", "sport", "nat_ip", "nat_port", "dst", "dport", "status"} <= set(rows[0])
        ported = [r for r in rows if r["proto"] in ("tcp", "udp")]
        assert ported and all(r["sport"].isdigit() and r["dport"].isdigit() for r in ported)


def envelope_of(capsys, argv: list[str], command: str) -> dict:
    doc = json.loads(out_of(capsys, [*argv, "--format", "json"]))
    assert list(doc)[:3] == ["natfleet", "command", "generated"]
    assert list(doc)[-2:] == ["rows", "errors"]
    assert doc["natfleet"] == 1 and doc["command"] == command
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["generated"])
    return doc


def test_json_is_one_envelope_for_conns_summary_and_local(fleet, capsys):
    conns = envelope_of(capsys, ["conns", "-n"], "conns")
    assert {"filters", "sort", "limit", "boxes"} <= set(conns)
    assert conns["boxes"][0]["target"]["label"] == "nflab-box1 (i-7673c17c4d91bcb80)"
    assert conns["rows"][0]["target"]["short_label"] == "nflab-box1"
    summary = envelope_of(capsys, ["summary"], "summary")
    assert summary["total"]["flows"] == sum(r["summary"]["flows"] for r in summary["rows"])
    assert summary["rows"][0]["summary"]["fill_pct"] == summary["total"]["fill_pct"]
    local = envelope_of(capsys, ["local", "-n", "--input", fleet], "local")
    assert {"hostname", "source", "count", "max", "lines", "matched", "malformed"} <= set(local)
    assert len(local["rows"]) * 3 == len(conns["rows"])


@pytest.mark.parametrize("argv", [["conns", "-n"], ["local", "-n", "--input"]], ids=" ".join)
def test_jsonl_is_one_object_per_row_with_status(fleet, capsys, argv):
    if argv[0] == "local":
        argv = [*argv, fleet]
    lines = out_of(capsys, [*argv, "--format", "jsonl"]).splitlines()
    rows = [json.loads(line) for line in lines]
    doc = json.loads(out_of(capsys, [*argv, "--format", "json"]))
    assert [{**r, "timeout": 0} for r in rows] == [{**r, "timeout": 0} for r in doc["rows"]]
    assert all(isinstance(r, dict) and r["status"] for r in rows)


def test_every_row_has_the_status_the_text_shows(fleet, capsys):
    rows = envelope_of(capsys, ["conns", "-n"], "conns")["rows"]
    text = out_of(capsys, ["conns", "-n"]).splitlines()[1:]
    assert [r["status"] for r in rows] == [line.split()[-1] for line in text]
    quiet = [r for r in rows if r["proto"] in ("udp", "icmp")]
    assert quiet and all(r["state"] is None for r in quiet)
    assert {r["status"] for r in quiet} <= {"REPLIED", "UNREPLIED", "ASSURED"}
    tcp = [r for r in rows if r["proto"] == "tcp"]
    assert all(r["status"] == r["state"] for r in tcp) and all("flags" in r for r in rows)


def test_counts_above_the_tables_on_a_terminal(fleet, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert not re.search("in use", out_of(capsys, ["summary"]))  # a pipe: no counts
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    lines = out_of(capsys, ["summary"]).splitlines()
    assert re.fullmatch(r"nflab-box1: \d+ in use", lines[0])  # a dump: no table size
    assert re.fullmatch(r"fleet: [\d,]+ in use on 3 boxes", lines[3])
    assert lines[4].startswith("HOST ")
    lines = out_of(capsys, ["conns", "-nN"]).splitlines()
    assert lines[3].startswith("fleet: ") and lines[4].startswith("Host ")


# --- the same on the shared lab, over SSH ----------------------------------------------------


@pytest.fixture
def lab_env(lab, monkeypatch):
    """natfleet pointed at the lab: its moto server, ssh_config and known_hosts."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    return lab


@pytest.mark.lab
@pytest.mark.parametrize("argv", [["conns", "-nN"], ["summary"]], ids=" ".join)
def test_lab_default_output_fits_120_columns(lab_env, capsys, monkeypatch, argv):
    monkeypatch.setenv("COLUMNS", "120")
    out = out_of(capsys, argv)
    assert_fits(out)
    first = {line.split()[0] for line in out.splitlines()[1:]}
    assert {box.name for box in lab_env.boxes} <= first  # AWS names, short: no "(i-...)"
    monkeypatch.delenv("COLUMNS")
    wide = out_of(capsys, [*argv, "--wide"])
    assert all(f"{box.name} (i-" in wide for box in lab_env.boxes)
