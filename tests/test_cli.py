"""The command line: help text, exit codes, error messages, netstat-nat layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from natfleet import agent
from natfleet.cli import build_parser, main
from natfleet.commands import local as local_cmd
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
    assert main(["local", "-n", "-p", "tcpx", "--input", ROOT_TABLE]) == 2
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
    captured = capsys.readouterr()
    assert "natfleet: 1 malformed conntrack line(s) skipped (of 3 read" in captured.out
    assert "malformed line 2: 'ipv4" in captured.err


def test_json_rows_carry_the_contract_fields(capsys):
    assert main(["local", "-n", "--format", "json", "--input", ROOT_TABLE]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 9
    for row in rows:
        assert {"proto", "state", "nat", "orig", "reply"} <= set(row)
        assert {"src", "dst"} <= set(row["orig"]) and {"src", "dst"} <= set(row["reply"])


def test_csv_has_a_header_and_one_line_per_row(capsys):
    assert main(["local", "-n", "--format", "csv", "--input", ROOT_TABLE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "proto,nat,source,nat_host,destination,state,timeout"
    assert len(lines) == 10


def test_unreadable_table_says_to_use_sudo(monkeypatch, capsys):
    class Denied(agent.LocalSources):
        def open_lines(self, path):
            raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(local_cmd, "sources_for", lambda path: Denied("/"))
    assert main(["local", "-n"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot read /proc/net/nf_conntrack: permission denied")
    assert "sudo" in err


def test_fleet_commands_over_saved_dumps(tmp_path, capsys):
    second = tmp_path / "second.txt"
    second.write_text((DATA / "lines" / "ipv6-tcp-snat.txt").read_text())
    assert (
        main(["conns", "-n", "--format", "json", "--input", ROOT_TABLE, "--input", str(second)])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10
    assert {r["target"]["host"] for r in rows} == {ROOT_TABLE, str(second)}
    assert main(["summary", "--format", "json", "--input", ROOT_TABLE, "--input", str(second)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [b["summary"]["flows"] for b in summary["boxes"]] == [11, 1]
    assert summary["total"]["flows"] == 12


def test_a_failed_target_is_a_row_and_exit_code_3(capsys):
    # nothing listens on 127.0.0.1:9, so the SSH connection is refused at once
    argv = ["summary", "--input", ROOT_TABLE, "--host", "root@127.0.0.1:9", "--timeout", "5"]
    code = main(argv)
    out = capsys.readouterr()
    assert code == 3
    assert re.search(r"127.0.0.1:9 .*connect: connection refused by root@127.0.0.1:9", out.out)
    assert "TOTAL (1/2 boxes)" in out.out
    assert "natfleet: 127.0.0.1:9: connect: connection refused" in out.err


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
    assert main(["conns", "-n", "-p", "tcpx", "--host", "root@127.0.0.1:9"]) == 2
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
