"""natfleet.output, the one output layer: escaping, CSV neutralisation, strict JSON, capped
warnings and log lines; and hostile AWS and box strings through discover, gateways, compare
and lab status in every format (in-process moto, never real AWS)."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import doctest
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Optional

import pytest
from moto import mock_aws

import natfleet.lab
from natfleet import output, text
from natfleet.agent import Flow
from natfleet.cli import main
from natfleet.commands import compare as compare_cmd
from natfleet.commands import discover as discover_cmd
from natfleet.commands import gateways as gateways_cmd
from natfleet.lab import aws as lab_aws
from natfleet.lab.state import LabBox, LabState
from natfleet.models import Device, HostError, Target
from natfleet.output import Column, clip, csv_cell, json_text, safe, warn, write_output
from natfleet.render import NetstatStyle, write_flows

REGION = "us-east-1"
BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
# What a compromised box or a hostile tag can say: erase the screen, write the clipboard
# (OSC 52), reverse the line, return to column 0 and forge a row, start a formula.
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
HOSTILE = (
    "=evil\x1b[2J" + OSC52 + "\u202egnp.exe\rnat-b  ESTABLISHED\nforged\x7f\x9b\u2028"
    "\u2066x\u2069\u200e\t$(reboot)"
)
# EC2's XML answers cannot carry ESC, BEL or CR; everything else above they can.
XML_HOSTILE = "=evil\x7f\x9b\u202egnp\u2066\u200e\u2028\tq\nforged nat-b row"
XML_TYPE = "t4g.nano\u202e\x7f\x9b\t"


def assert_clean(text: str, where: str = "") -> None:
    """No byte below 0x20 but newline, no DEL, no C1, no bidi control, no line separator."""
    for i, char in enumerate(text):
        code = ord(char)
        bad = (
            (code < 0x20 and char != "\n")
            or 0x7F <= code < 0xA0
            or code in BIDI
            or char in "\u2028\u2029"
        )
        assert not bad, f"{where}: raw U+{code:04X} at {i}: {text[max(0, i - 40) : i + 40]!r}"


# --- safe() -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("\x1b[2J", "\\x1b[2J"),
        (OSC52, "\\x1b]52;c;cm0gLXJmIH4=\\x07"),
        ("a\u202eb", "a\\u202eb"),
        ("a\rb", "a\\rb"),
        ("a\nb", "a\\nb"),
        ("a\tb", "a\\tb"),
        ("a\x7fb", "a\\x7fb"),
        ("a\x9bb", "a\\x9bb"),
        ("a\u2028b\u2029", "a\\u2028b\\u2029"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        ("\x00\x08\x0b", "\\x00\\x08\\x0b"),
        ("\ufeff\u200b", "\\ufeff\\u200b"),
        ("\U000e0041", "\\U000e0041"),  # a tag character
    ],
)
def test_safe_escapes_each_class_visibly(raw, shown):
    assert safe(raw) == shown
    assert safe(shown) == shown  # escaped text is printable: escaping twice changes nothing


def test_safe_keeps_printable_unicode_and_is_the_one_implementation():
    plain = "nat-a (i-0abc) é € 日本 ▁▂█ [31m $(reboot) \\x1b"
    assert safe(plain) == plain
    assert text.printable is safe
    assert safe(42) == "42" and safe(None) == "None"


def test_safe_output_of_every_code_point_is_printable():
    for code in range(0x110000):
        char = chr(code)
        shown = safe(char)
        assert shown.isprintable(), hex(code)
        assert shown == char or (shown.isascii() and shown.startswith("\\")), hex(code)


# --- warn(), clip(), log lines --------------------------------------------------------------


def test_warn_is_one_escaped_capped_line(capsys):
    warn("nat-b: agent: " + "\x1b[2Jhost key CHANGED\n" * 3)
    err = capsys.readouterr().err
    assert err == "natfleet: nat-b: agent: " + "\\x1b[2Jhost key CHANGED\\n" * 3 + "\n"

    warn("x" * 5_000_000)  # a 5 MB error text: one line, cut
    err = capsys.readouterr().err
    assert err == "natfleet: " + "x" * output.MESSAGE_LIMIT + "... (4998000 more characters)\n"


def test_clip_counts_escapes_in_the_limit_and_never_cuts_one():
    shown = clip("\x1b" * 3000, 2000)
    assert shown == "\\x1b" * 500 + "... (2500 more characters)"
    assert clip("ab\x1b", 5) == "ab... (1 more characters)"  # \x1b would not fit whole
    assert clip("short", 5) == "short"


def test_safe_log_formatter_escapes_message_and_traceback():
    formatter = output.SafeLogFormatter("natfleet: %(levelname)s: %(message)s")
    try:
        raise ValueError("banner\x1b]52;c;eA==\x07\u202e")
    except ValueError:
        record = logging.LogRecord(
            "natfleet.ssh", logging.WARNING, __file__, 1, "banner %s", ("\x1b[2J\nfake",), None
        )
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).split("\n")
    assert lines[0] == "natfleet: WARNING: banner \\x1b[2J\\nfake"
    assert lines[-1] == "ValueError: banner\\x1b]52;c;eA==\\x07\\u202e"
    assert lines[1] == "Traceback (most recent call last):"
    assert_clean("\n".join(lines), "log")


def test_log_handler_writes_escaped_lines():
    stream = io.StringIO()
    logger = logging.getLogger("natfleet.test_output")
    logger.addHandler(output.log_handler(stream))
    logger.propagate = False
    try:
        logger.warning("CloudWatch gave %s for %s", "Forbidden\x1b[2J", "nat-1\nnatfleet: fake")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert stream.getvalue() == (
        "natfleet: WARNING: CloudWatch gave Forbidden\\x1b[2J for nat-1\\nnatfleet: fake\n"
    )


# --- CSV ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_starting_a_formula_are_neutralised(lead):
    cell = csv_cell(lead + 'HYPERLINK("http://192.0.2.1")')
    assert (
        isinstance(cell, str)
        and cell.startswith("'")
        and cell[1:] == safe(lead + 'HYPERLINK("http://192.0.2.1")')
    )
    buf = io.StringIO()
    write_output(buf, "csv", "test", [{"v": lead + "1+1"}], [Column("v", "V")])
    assert next(csv.reader(io.StringIO(buf.getvalue().splitlines()[1])))[0].startswith("'")


def test_csv_numbers_stay_numbers_and_structures_are_never_literals():
    assert [csv_cell(v) for v in (-3, 0, 2.5, -0.25)] == [-3, 0, 2.5, -0.25]
    assert csv_cell(None) == "" and csv_cell(True) == "true" and csv_cell(False) == "false"
    assert csv_cell(["tag:Role=nat", "route:rtb-1 0.0.0.0/0"]) == (
        "tag:Role=nat;route:rtb-1 0.0.0.0/0"
    )
    assert csv_cell({"drop": 1, "eth0": {"pps": 2}}) == "drop=1;eth0.pps=2"
    assert csv_cell(["-1"]) == "'-1"  # the joined cell is checked, not just plain strings
    assert csv_cell(dt.datetime(2026, 12, 1, 15, 9, 37, tzinfo=dt.timezone.utc)) == (
        "2026-12-01T15:09:37Z"
    )
    for unknown in ({1, 2}, object(), Path("/x")):
        with pytest.raises(TypeError):
            csv_cell(unknown)
    buf = io.StringIO()
    columns = [Column("n", "N"), Column("s", "S"), Column("x", "X")]
    write_output(buf, "csv", "test", [{"n": -3, "s": "-3", "x": None}], columns)
    assert buf.getvalue() == "n,s,x\n-3,'-3,\n"  # \n line ends: no CR in the output


# --- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_is_strict_about_non_finite_numbers(bad):
    with pytest.raises(ValueError):
        json_text({"rows": [{"pct": bad}]})


def test_json_times_are_iso_utc_z_and_unknown_types_raise():
    plus_one = dt.timezone(dt.timedelta(hours=1))
    data = {
        "aware": dt.datetime(2026, 12, 1, 16, 9, 37, 279812, tzinfo=plus_one),
        "naive": dt.datetime(2026, 12, 1, 15, 9, 37),
    }
    assert json.loads(json_text(data)) == {
        "aware": "2026-12-01T15:09:37Z",
        "naive": "2026-12-01T15:09:37Z",
    }
    for unknown in ({1}, object(), Path("/x"), dt.date(2026, 12, 1)):
        with pytest.raises(TypeError):
            json_text({"x": unknown})


def test_json_is_ascii_and_round_trips_hostile_strings():
    data = {HOSTILE: [HOSTILE, "é€"]}
    out = json_text(data)
    assert out.isascii() and "\\u007f" in out
    assert_clean(out, "json")
    assert json.loads(out) == data


# --- tables -------------------------------------------------------------------------------


def test_table_cells_and_headers_are_escaped_and_stay_on_their_line():
    columns = [Column("n", "na\x1bme"), Column("l", "list"), Column("x", "n"), Column("f", "f")]
    buf = io.StringIO()
    write_output(
        buf, "table", "test", [{"n": HOSTILE, "l": ["a\x1b[2J", "b"], "f": 2 / 3}], columns
    )
    out = buf.getvalue()
    assert_clean(out, "table")
    assert safe(HOSTILE) in out and "NA\\x1bME" in out
    lines = out.splitlines()
    assert len(lines) == 2 and "a\\x1b[2J, b" in lines[1] and "0.67" in lines[1]
    assert "N " not in lines[0]  # empty for every row: left out
    with pytest.raises(ValueError):
        write_output(io.StringIO(), "yaml", "test", [], columns)


def test_docstring_examples_run():
    result = doctest.testmod(output, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --- netstat rows and flow records --------------------------------------------------------

LINE = (
    "ipv4 2 tcp 6 3599 ESTABLISHED src=192.168.1.10 dst=203.0.113.5 sport=40000 dport=443 "
    "src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] mark=0 zone=0 use=2"
)


@pytest.mark.parametrize("fmt", ["netstat", "table", "csv", "json", "jsonl"])
def test_box_names_in_rows_are_escaped_per_row(fmt):
    flow = Flow.parse(LINE, own=())
    targets = [{"label": "nat-a (i-1)"}, {"label": "nat-b (i-2)"}]
    names = [{"203.0.113.5": HOSTILE}, {}]  # each box's own lookups, for its own row
    errors = [{"target": {"label": "nat-c"}, "kind": "answer", "error": HOSTILE}]
    buf = io.StringIO()
    write_flows(buf, fmt, [flow, flow], NetstatStyle(), targets, errors, names)
    out = buf.getvalue()
    assert_clean(out, fmt)
    if fmt == "json":
        assert json.loads(out)["errors"][-1]["error"] == HOSTILE
        return
    if fmt == "jsonl":
        assert json.loads(out.splitlines()[-1])["error"] == HOSTILE
        return
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert rows[0]["dst_name"] == "'" + safe(HOSTILE) and rows[1]["dst_name"] == ""
        assert rows[0]["dst"] == rows[1]["dst"] == "203.0.113.5" and rows[1]["dport"] == "443"
        assert rows[2]["error_kind"] == "answer" and rows[2]["target"] == "nat-c"
        return
    lines = out.splitlines()
    rows = [line for line in lines if "192.168.1.10" in line]
    assert len(rows) == 2 and "\\x1b[2J" in rows[0] and "203.0.113.5:443" in rows[1]
    assert sum("ERROR answer" in line for line in lines) == 1


# --- hostile AWS strings through the commands ----------------------------------------------


@pytest.fixture
def hostile_world(monkeypatch):
    """moto: the lab's world plus a NAT instance and a gateway named by a hostile hand (what
    EC2's XML can carry), and an instance of a hostile type."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name=REGION)
        box = LabBox("nat-1", "ns1", "198.19.255.11", "", "", "", "")
        info = lab_aws.build_world(ec2, [box])
        subnet = ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": ["nflab-mgmt"]}])
        hostile = ec2.run_instances(
            ImageId=lab_aws.AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType=XML_TYPE,
            SubnetId=subnet["Subnets"][0]["SubnetId"],
            PrivateIpAddress="198.19.255.99",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "Name", "Value": XML_HOSTILE},
                        {"Key": "Role", "Value": "nat"},
                    ],
                }
            ],
        )["Instances"][0]["InstanceId"]
        ec2.create_tags(
            Resources=[info["nat_gateway_id"]], Tags=[{"Key": "Name", "Value": XML_HOSTILE}]
        )
        failed = HostError(
            Target(XML_HOSTILE, "198.19.255.99", instance_id=hostile), HOSTILE, "answer"
        )
        monkeypatch.setattr(compare_cmd, "run_from_args", lambda *a, **k: [failed])
        yield {"hostile": hostile, **info}


def hostile_devices(*_args, **_kwargs) -> list[Device]:
    """What a hostile account could make discovery return, with ESC, BEL and CR too."""
    return [
        Device(
            "instance",
            "i-0123456789abcdef0",
            REGION,
            name=HOSTILE,
            vpc_id="vpc-1\x1b[31m",
            private_ip="198.19.255.99",
            instance_type=HOSTILE,
            state="running\r",
            found_by=[f"tag:Role={HOSTILE}", "route:rtb-1 0.0.0.0/0\n"],
            tags={"Name": HOSTILE, HOSTILE: "x"},
        ),
        Device("gateway", "nat-0123456789abcdef0", REGION, name=HOSTILE, vpc_id=HOSTILE),
    ]


COMMANDS = [["discover"], ["gateways", "--since", "1h"], ["compare", "--since", "1h"]]


def strings(data: object) -> set[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(data, str):
        return {data}
    if isinstance(data, dict):
        return set(data).union(*(strings(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(strings(v) for v in data))
    return set()


def check_command_output(argv, fmt, capsys, name):
    code = main([*argv, "--format", fmt])
    captured = capsys.readouterr()
    assert code in (0, 1, 3), captured.err
    assert_clean(captured.out, f"{argv[0]} {fmt} stdout")
    assert_clean(captured.err, f"{argv[0]} {fmt} stderr")
    if fmt == "json":
        assert name in strings(json.loads(captured.out))  # the value itself, intact
    elif fmt == "csv":
        cells = [c for row in csv.reader(io.StringIO(captured.out)) for c in row]
        assert "'" + safe(name) in cells  # escaped, and the leading = made inert
        assert all(not c.startswith(("=", "+", "@")) for c in cells)
    else:
        assert safe(name) in captured.out or safe(name)[:20] in captured.out


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_hostile_ec2_tags_and_types_never_reach_stdout_raw(hostile_world, capsys, argv, fmt):
    check_command_output(argv, fmt, capsys, XML_HOSTILE)


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_escape_sequences_never_reach_stdout_raw(hostile_world, capsys, monkeypatch, argv, fmt):
    for module in (discover_cmd, gateways_cmd, compare_cmd):
        monkeypatch.setattr(module, "devices_from_args", hostile_devices)
    check_command_output(argv, fmt, capsys, HOSTILE)


def test_compare_table_says_a_hostile_box_error_escaped(hostile_world, capsys):
    assert main(["compare", "--since", "1h"]) == 1  # the only box failed
    captured = capsys.readouterr()
    assert safe(HOSTILE)[:30] in captured.out and "answer: " in captured.out
    assert_clean(captured.out + captured.err, "compare")


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_lab_status_escapes_box_names(monkeypatch, capsys, fmt):
    boxes = [LabBox(HOSTILE, "nflab-box1", "198.19.255.11", "", "", "", "", instance_id=HOSTILE)]
    state = LabState("/run/lab\x1b[2J", boxes, "", "", "", {"endpoint_url": HOSTILE}, 60, 1.0)
    row = {"name": HOSTILE, "mgmt_ip": "198.19.255.11", "netns": True, "sshd": False}
    monkeypatch.setattr(natfleet.lab, "load_state", lambda: state)
    monkeypatch.setattr(
        natfleet.lab, "box_status", lambda _s: [{**row, "conntrack": 3, "instance_id": HOSTILE}]
    )
    assert main(["lab", "status", "--format", fmt]) == 1  # sshd down
    out = capsys.readouterr().out
    assert_clean(out, f"lab status {fmt}")
    if fmt == "json":
        data = json.loads(out)
        assert data["rows"][0]["name"] == HOSTILE and data["stops_at"] == "1970-01-01T00:01:01Z"
    elif fmt == "table":
        assert "down" in out and "\\x1b[2J" in out and "1970-01-01T00:01:01Z" in out
    else:
        assert next(csv.DictReader(io.StringIO(out)))["name"] == "'" + safe(HOSTILE)


# --- the output interface: Column, add_output_options, write_output -------------------------


class Tty(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


COLUMNS = (
    output.Column("target", "Host", short="short_label"),
    output.Column("flows", "FLOWS", kind="int"),
    output.Column("fill_pct", "FILL", kind="pct"),
    output.Column("max", "MAX", wide=True, kind="int"),
    output.Column("note", "NOTE"),
    output.Column("error", "ERROR", shrink=True),
    output.Column("shown", "SHOWN", csv=False),
    output.Column("hidden", "HIDDEN", table=False),
)
RECORDS = [
    {"target": "nat-a (i-1)", "short_label": "nat-a", "flows": 27, "fill_pct": 0.05,
     "max": 262144, "note": None, "error": "", "shown": "a:1", "hidden": 720.0},
    {"target": "nat-b (i-2)", "short_label": "nat-b", "flows": 3, "fill_pct": 12.5,
     "max": 65536, "note": "", "error": "timeout: " + "x" * 200, "shown": "b:2", "hidden": -1},
]  # fmt: skip


def render(fmt: str, stream: Optional[io.StringIO] = None, **kwargs) -> str:
    buf = stream or io.StringIO()
    output.write_output(buf, fmt, "summary", RECORDS, COLUMNS, **kwargs)
    return buf.getvalue()


def test_table_is_compact_fitted_upper_case_and_leaves_empty_columns_out(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    lines = render("table").splitlines()
    assert lines[0].split() == ["HOST", "FLOWS", "FILL", "ERROR", "SHOWN"]
    assert lines[1].split()[:3] == ["nat-a", "27", "0.05%"]  # short label; pct as in every table
    assert max(len(line) for line in lines) <= 60
    assert "…" in lines[2] and "x" * 200 not in lines[2]  # the error cut to fit, shown cut
    assert "b:2" in lines[2]  # not a shrink column: never cut


def test_wide_shows_every_table_column_and_cuts_nothing(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    lines = render("table", wide=True).splitlines()
    assert lines[0].split() == ["HOST", "FLOWS", "FILL", "MAX", "ERROR", "SHOWN"]
    assert lines[1].startswith("nat-a (i-1)") and "262144" in lines[1]
    assert "x" * 200 in lines[2]
    assert "NOTE" not in lines[0] and "HIDDEN" not in lines[0]  # empty; CSV/JSON only


def test_no_terminal_and_no_columns_cuts_nothing(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert "x" * 200 in render("table")


def test_counts_go_above_the_table_on_a_terminal_only(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    counts = ["nat-a: 27 in use of 262,144", "fleet: 30 in use of 327,680"]
    assert render("table", Tty(), counts=counts).splitlines()[:3] == [*counts, render(
        "table").splitlines()[0]]  # fmt: skip
    assert "in use" not in render("table", counts=counts)


def test_csv_has_every_csv_column_and_plain_cells():
    rows = list(csv.reader(io.StringIO(render("csv"))))
    assert rows[0] == ["target", "flows", "fill_pct", "max", "note", "error", "hidden"]
    assert rows[1] == ["nat-a (i-1)", "27", "0.05", "262144", "", "", "720"]
    assert rows[2][-1] == "-1" and rows[2][1] == "3"  # a negative number is not a formula


def test_csv_and_table_give_errors_their_own_rows(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    errors = [{"target": {"label": "nat-c (i-3)", "short_label": "nat-c"}, "kind": "auth",
               "error": "denied", "seconds": 0.5}]  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(render("csv", errors=errors))))
    assert rows[-1]["target"] == "nat-c (i-3)" and rows[-1]["error_kind"] == "auth"
    assert rows[-1]["error"] == "auth: denied" and rows[-1]["flows"] == ""
    last = render("table", errors=errors).splitlines()[-1]
    assert last.startswith("nat-c") and last.split()[1:] == ["ERROR", "auth:", "denied"]


def test_json_is_the_one_envelope():
    errors = [{"target": {"label": "nat-c"}, "kind": "auth", "error": "denied"}]
    doc = json.loads(render("json", meta={"total": {"flows": 30}}, errors=errors))
    assert list(doc) == ["natfleet", "command", "generated", "total", "rows", "errors"]
    assert doc["natfleet"] == 1 and doc["command"] == "summary"
    assert dt.datetime.strptime(doc["generated"], "%Y-%m-%dT%H:%M:%SZ")
    assert doc["rows"][0]["hidden"] == 720.0 and "shown" not in doc["rows"][0]
    assert "short_label" not in doc["rows"][0] and doc["errors"] == errors
    with pytest.raises(ValueError):
        render("json", meta={"rows": []})


def test_jsonl_is_one_object_per_line_errors_included():
    errors = [{"target": {"label": "nat-c"}, "kind": "auth", "error": "denied"}]
    lines = render("jsonl", errors=errors, rows=[{"a": 1}, {"a": 2}]).splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1}, {"a": 2}, errors[0]]


def test_table_widths_count_wide_characters_and_escape_hostile_text(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    records = [{"target": "日本語のNAT", "error": HOSTILE}, {"target": "nat-b", "error": "x"}]
    buf = io.StringIO()
    output.write_output(buf, "table", "summary", records, COLUMNS)
    out = buf.getvalue()
    assert_clean(out, "fitted table")
    assert all(output.text_width(line) <= 40 for line in out.splitlines())
    lines = out.splitlines()  # 日本語のNAT takes 11 columns: the next column starts at 13
    assert lines[1].startswith("日本語のNAT  =evil") and lines[2] == "nat-b" + " " * 8 + "x"


def test_output_options_format_wide_and_short_o():
    parser = argparse.ArgumentParser()
    output.add_output_options(parser)
    assert (parser.parse_args([]).format, parser.parse_args([]).wide) == ("table", False)
    assert parser.parse_args(["-o", "jsonl"]).format == "jsonl"
    args = parser.parse_args(["-o", "wide"])
    assert (args.format, args.wide) == ("table", True)
    assert parser.parse_args(["--format", "csv", "--wide"]).wide
    netstat = argparse.ArgumentParser()
    netstat.add_argument("-o", dest="no_header", action="store_true")
    output.add_output_options(netstat, ("netstat", "json"), default="netstat", short_o=False)
    args = netstat.parse_args(["-o", "--wide"])
    assert (args.no_header, args.wide, args.format) == (True, True, "netstat")


def test_ascii_only_stream_gets_an_ascii_cut(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    output.write_output(stream, "table", "summary", RECORDS, COLUMNS)
    stream.seek(0)
    text = stream.read()
    assert "~" in text and all(len(line) <= 40 for line in text.splitlines())
