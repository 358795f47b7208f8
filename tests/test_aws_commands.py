"""``natfleet discover``, ``gateways`` and ``lab status`` run in-process against moto: the
lab's own AWS world (three NAT instances, a NAT gateway, the lab's gateway series)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import pytest
from moto import mock_aws

from natfleet.cli import main
from natfleet.commands import gateways as gateways_cmd
from natfleet.lab import aws as lab_aws
from natfleet.lab.state import LabBox
from natfleet.output import human, sparkline

REGION = "us-east-1"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DISCOVER_COMPACT = ("KIND", "ID", "NAME", "VPC", "PRIVATE IP", "STATE", "FOUND BY")
DISCOVER_WIDE = ("REGION", "SUBNET", "PUBLIC IP", "TYPE", "ROUTE TABLES")
GATEWAYS_COMPACT = ("GATEWAY", "NAME", "PEAK CONN", "ACTIVE", "BYTES OUT", "BYTES IN")
GATEWAYS_COMPACT += ("PORT ERR", "DROPS", "DROP RATE")
GATEWAYS_WIDE = ("REGION", "VPC", "ATTEMPTS", "ESTABLISHED", "PKTS OUT", "PKTS IN")
GATEWAYS_WIDE += ("IDLE TIMEOUTS", "OUT/S", "IN/S", "PROCESSED")


class Terminal(io.StringIO):
    """A stream that says it is a terminal (what a person at a 120-column terminal sees)."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


@pytest.fixture
def moto_env(monkeypatch):
    """The lab's AWS side in in-process moto: nflab-box1..3 (box 2 routed via its ENI), the
    hostile instance, nflab-natgw with its hour of seeded metrics (lab_aws.gateway_series)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name=REGION)
        boxes = [
            LabBox(f"nflab-box{i}", f"nflab-box{i}", f"198.19.255.{10 + i}", f"198.51.100.{10 + i}",
                   "", "", "")
            for i in (1, 2, 3)
        ]  # fmt: skip
        info = lab_aws.build_world(ec2, boxes)
        cw = boto3.client("cloudwatch", region_name=REGION)
        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        at = [now - dt.timedelta(minutes=lab_aws.GATEWAY_POINTS - i) for i in range(60)]
        dims = [{"Name": "NatGatewayId", "Value": info["nat_gateway_id"]}]
        points = [
            {"MetricName": metric, "Dimensions": dims, "Timestamp": t, "Value": v}
            for metric, values in lab_aws.gateway_series().items()
            for t, v in zip(at, values)
        ]
        for i in range(0, len(points), 500):
            cw.put_metric_data(Namespace="AWS/NATGateway", MetricData=points[i : i + 500])
        yield {"boxes": boxes, "ec2": ec2, **info}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def header_of(table: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(("KIND", "GATEWAY")))


def assert_fits(text: str, width: int = 120) -> None:
    widest = max(text.splitlines(), key=len)
    assert len(widest) <= width, f"{len(widest)} characters: {widest!r}"


def assert_plain_csv(text: str) -> list[dict[str, str]]:
    """Every cell one plain value: no list, mapping, triple, Python literal or float noise."""
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for key, cell in row.items():
            assert not re.search(r"[\[\]{};]|\d/\d+/\d|^(True|False|None)$|\.0$|e-\d", cell), (
                key,
                cell,
            )
    return rows


# --- discover -----------------------------------------------------------------------------


def test_discover_fits_120_columns_with_the_compact_columns(moto_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run(capsys, "discover")
    assert code == 0
    assert_fits(out)
    assert header_of(out).split("  ")[0] == "KIND"
    assert all(h in header_of(out) for h in DISCOVER_COMPACT)
    assert not any(h in header_of(out) for h in DISCOVER_WIDE)
    assert "BLACKHOLE" not in out  # no route to a missing target: the column is left out
    rows = {line.split()[2]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"nflab-box1", "nflab-box2", "nflab-box3", "nflab-natgw"}
    assert rows["nflab-box2"].endswith("tag, src/dst off, route")
    assert "nat-gateway" in rows["nflab-natgw"]


def test_discover_wide_shows_every_column(moto_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    for flag in (["-o", "wide"], ["--wide"]):
        code, out, _ = run(capsys, "discover", *flag)
        assert code == 0
        assert all(h in header_of(out) for h in DISCOVER_COMPACT + DISCOVER_WIDE)
        assert "198.51.100.12" in out and "t4g.nano" in out and "rtb-" in out


def test_discover_shows_blackhole_routes_when_there_are_some(moto_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    ec2 = moto_env["ec2"]
    box3 = moto_env["boxes"][2].instance_id
    ec2.terminate_instances(InstanceIds=[box3])  # its route table still sends 0.0.0.0/0 to it
    code, out, _ = run(capsys, "discover")
    assert code == 0
    assert_fits(out)
    assert "BLACKHOLE" in header_of(out)
    (missing,) = [line for line in out.splitlines() if line.startswith("missing")]
    assert missing.split()[1] == box3 and missing.split()[-1] == "1"  # one blackhole route
    box_rows = [line for line in out.splitlines() if "nflab-box" in line]
    assert box_rows and not any(line.endswith(" 1") for line in box_rows)
    wide = run(capsys, "discover", "-o", "wide")[1]
    (missing,) = [line for line in wide.splitlines() if line.startswith("missing")]
    assert "rtb-" in missing  # which route table it is
    rows = assert_plain_csv(run(capsys, "discover", "-o", "csv")[1])
    assert [r["blackholes"] for r in rows if r["kind"] == "missing"] == ["1"]


def test_discover_csv_is_one_plain_value_per_cell(moto_env, capsys):
    code, out, _ = run(capsys, "discover", "--format", "csv")
    assert code == 0
    rows = {r["name"]: r for r in assert_plain_csv(out)}
    box2 = rows["nflab-box2"]
    assert box2["found_by_tag"] == "Role=nat" and box2["found_by_routes"] == "1"
    assert box2["found_by_source_dest_check"] == "true" and box2["blackholes"] == "0"
    assert box2["private_ip"] == "198.19.255.12" and box2["public_ip"] == "198.51.100.12"
    assert rows["nflab-natgw"]["found_by_source_dest_check"] == "false"
    assert "found_by" not in box2 and "tags" not in box2  # lists and mappings: JSON only


def test_discover_json_is_the_envelope_and_jsonl_a_device_a_line(moto_env, capsys):
    code, out, _ = run(capsys, "discover", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert (data["natfleet"], data["command"], data["errors"]) == (1, "discover", [])
    assert ISO_UTC.match(data["generated"])
    devices = {d["name"]: d for d in data["rows"]}
    assert {"nflab-box1", "nflab-box2", "nflab-box3", "nflab-natgw"} <= set(devices)
    box2 = devices["nflab-box2"]
    assert box2["found_by"][0] == "tag:Role=nat" and " via eni-" in box2["found_by"][2]
    assert box2["tags"]["Role"] == "nat" and box2["route_tables"][0].startswith("rtb-")

    code, out, _ = run(capsys, "discover", "-o", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in lines] == [d["id"] for d in data["rows"]]


def test_hostile_tags_are_escaped_in_tables(moto_env, capsys):
    code, out, _ = run(capsys, "discover", "--tag", "Role=nat ", "--format", "table")
    assert code == 0
    assert "\u202e" not in out and "\\u202e" in out
    assert "$(reboot)" in out  # printed as text, never run


def test_missing_credentials_exit_code_and_message(monkeypatch, capsys):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never anywhere real
    assert main(["discover"]) == 1
    err = capsys.readouterr().err
    assert "no AWS credentials: set AWS_PROFILE or run 'aws configure'" in err


# --- gateways -----------------------------------------------------------------------------


def test_gateways_fit_120_columns_and_say_the_window(moto_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run(capsys, "gateways", "--since", "2h")
    assert code == 0
    assert_fits(out)
    window, header, row = out.splitlines()
    assert re.match(r"^window \S+Z to \S+Z, 60 s points$", window)
    assert all(h in header for h in GATEWAYS_COMPACT)
    assert not any(h in header for h in GATEWAYS_WIDE)
    series = lab_aws.gateway_series()
    cells = row.split()
    assert cells[:3] == [moto_env["nat_gateway_id"], "nflab-natgw", "720"]
    assert set(cells[3]) <= set("▁▂▃▄▅▆▇█") and "█" in cells[3]
    assert cells[4] == human(sum(series["BytesOutToDestination"]), "B")
    assert cells[6:8] == ["6", "6"]  # ErrorPortAllocation, PacketsDropCount sums
    drops = sum(series["PacketsDropCount"])
    packets = sum(series["PacketsInFromSource"]) + sum(series["PacketsInFromDestination"])
    assert 0 < drops / packets * 100 < 0.005 and cells[8] == "<0.01%"  # never shown as 0.00%


def test_gateways_wide_shows_every_column(moto_env, capsys):
    code, out, _ = run(capsys, "gateways", "--since", "2h", "--wide")
    assert code == 0
    header, row = out.splitlines()[1:]
    assert all(h in header for h in GATEWAYS_COMPACT + GATEWAYS_WIDE)
    assert "vpc-" in row and "KB/s" in row


def test_gateways_csv_json_jsonl(moto_env, capsys):
    code, out, _ = run(capsys, "gateways", "--since", "2h", "--format", "csv")
    assert code == 0
    (row,) = assert_plain_csv(out)
    assert row["peak_active_connections"] == "720" and row["error_port_allocation"] == "6"
    assert ISO_UTC.match(row["start"]) and ISO_UTC.match(row["end"]) and row["period"] == "60"
    assert "active_connections" not in row and "active_sparkline" not in row
    series = lab_aws.gateway_series()
    packets = sum(series["PacketsInFromSource"]) + sum(series["PacketsInFromDestination"])
    assert float(row["drop_rate"]) == pytest.approx(sum(series["PacketsDropCount"]) / packets)
    assert "e-" not in row["drop_rate"]  # plain decimal, never 3.9e-05

    code, out, _ = run(capsys, "gateways", "--since", "2h", "--format", "json")
    data = json.loads(out)
    assert data["command"] == "gateways" and data["window"]["period"] == 60
    assert ISO_UTC.match(data["window"]["start"]) and ISO_UTC.match(data["window"]["end"])
    (gateway,) = data["rows"]
    assert gateway["start"] == data["window"]["start"] and gateway["name"] == "nflab-natgw"
    assert gateway["active_connections"] == lab_aws.gateway_series()["ActiveConnectionCount"]
    assert gateway["connection_attempts"] == sum(lab_aws.gateway_series()["ConnectionAttemptCount"])

    code, out, _ = run(capsys, "gateways", "--since", "2h", "-o", "jsonl")
    (line,) = out.splitlines()
    same = {k: v for k, v in gateway.items() if k not in ("start", "end", "seconds")}
    assert {k: v for k, v in json.loads(line).items() if k in same} == same  # a later window


def test_gateways_no_data_is_not_zero(moto_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run(capsys, "gateways", "--since", "2h", "--until", "90m")  # no points
    assert code == 0
    header, row = out.splitlines()[1:]
    assert row.split()[2:] == ["-"] * (len(row.split()) - 2)
    data = json.loads(run(capsys, "gateways", "--since", "2h", "--until", "90m", "-o", "json")[1])
    assert data["rows"][0]["peak_active_connections"] is None


@pytest.mark.parametrize(
    "window, message",
    [
        (["--since", "1h", "--until", "2h"], "the window ends before it starts: --until 2h is"),
        (["--since", "2999-01-01T00:00:00Z"], "the window lies in the future"),
        (["--since", "yesterday"], "not 'yesterday'"),
    ],
)
def test_bad_windows_are_usage_errors(moto_env, capsys, window, message):
    code, out, err = run(capsys, "gateways", *window)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_an_ascii_terminal_gets_an_ascii_sparkline(moto_env, capsys, monkeypatch):
    """PYTHONIOENCODING=ascii: no UnicodeEncodeError; the sparkline falls back to ASCII."""
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr("sys.stdout", ascii_out)
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["gateways", "--since", "2h"]) == 0
    ascii_out.flush()
    text = raw.getvalue().decode("ascii")
    spark = text.splitlines()[2].split()[3]
    assert set(spark) <= set(gateways_cmd.ASCII_SPARKS) and "#" in spark


def test_cloudwatch_progress_only_on_a_terminal_and_gone_before_the_table(
    moto_env, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["gateways", "--since", "2h"]) == 0
    assert "CloudWatch" not in capsys.readouterr().err  # stderr is not a terminal here

    screen = Terminal()  # stdout and stderr on one terminal, as a person sees them
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)
    assert main(["gateways", "--since", "2h"]) == 0
    text = screen.getvalue()
    assert "\rnatfleet: CloudWatch: 0/1 batches" in text.replace("\x1b[K", "")
    assert "natfleet: CloudWatch: 1/1 batches, 1 page, 840 points" in text
    progress_end = text.rindex("\r\x1b[K")  # erased ...
    assert progress_end < text.index("window ") and text.endswith("\n")  # ... before the table
    assert text[progress_end:].startswith("\r\x1b[Kwindow ")


def test_sparkline_and_human():
    assert sparkline([]) == "no data"
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert sparkline(list(range(8))) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1440)))) == 24
    assert sparkline([0] * 100 + [9] + [0] * 100, width=10).count("█") == 1  # peaks survive
    assert human(None) == "no data"
    assert human(0) == "0"
    assert human(1536, "B") == "1.5KB"
    assert human(2_500_000) == "2.5M"
    ascii_stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert gateways_cmd.spark_cell(list(range(8)), ascii_stream) == "_.-:=+*#"
    assert gateways_cmd.spark_cell([], ascii_stream) is None


# --- lab status -----------------------------------------------------------------------------


@pytest.fixture
def lab_state(monkeypatch):
    """A recorded lab (box 2's sshd down) without touching the real one."""
    import natfleet.lab
    from natfleet.lab.state import LabState

    boxes = [
        LabBox(f"nflab-box{i}", f"nflab-box{i}", f"198.19.255.{10 + i}", "", "", "", "")
        for i in (1, 2)
    ]
    state = LabState("/run/natfleet-lab", boxes, "", "", "", {"endpoint_url": "http://x"}, 60, 1.5)
    rows = [
        {"name": b.name, "mgmt_ip": b.mgmt_ip, "netns": True, "sshd": i == 0, "conntrack": 20 + i,
         "instance_id": None}
        for i, b in enumerate(boxes)
    ]  # fmt: skip
    monkeypatch.setattr(natfleet.lab, "load_state", lambda: state)
    monkeypatch.setattr(natfleet.lab, "box_status", lambda _state: rows)
    return state


def test_lab_status_table_json_csv(lab_state, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run(capsys, "lab", "status")
    assert code == 1  # a box's sshd is down
    header, box1, box2, footer, endpoint = out.splitlines()
    assert header.split() == ["BOX", "MGMT", "IP", "NETNS", "SSHD", "CONNTRACK"]  # no instance
    assert box2.split() == ["nflab-box2", "198.19.255.12", "up", "down", "21"]
    assert footer == "state: /run/natfleet-lab; processes stop by 1970-01-01T00:01:01Z"
    assert endpoint == "AWS API (moto): http://x"

    data = json.loads(run(capsys, "lab", "status", "-o", "json")[1])
    assert (data["command"], data["stops_at"], data["state_dir"]) == (
        "lab status", "1970-01-01T00:01:01Z", "/run/natfleet-lab",
    )  # fmt: skip
    assert [r["sshd"] for r in data["rows"]] == [True, False] and data["aws_endpoint"] == "http://x"
    rows = assert_plain_csv(run(capsys, "lab", "status", "-o", "csv")[1])
    assert [(r["name"], r["sshd"], r["instance_id"]) for r in rows] == [
        ("nflab-box1", "true", ""), ("nflab-box2", "false", ""),
    ]  # fmt: skip


# --- the shared lab's moto server -----------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("command", [["discover"], ["gateways"], ["compare"], ["lab", "status"]])
def test_every_default_table_fits_120_columns_in_the_lab(lab, monkeypatch, capsys, command):
    """The lab as a person at a 120x40 terminal sees it (AWS API: the lab's moto server)."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = run(capsys, *command)
    assert code == 0, err
    assert len(out.splitlines()) >= 3
    assert_fits(out)
    code, wide, _ = run(capsys, *command, "-o", "wide")
    assert code == 0 and len(max(wide.splitlines(), key=len)) >= len(max(out.splitlines(), key=len))
