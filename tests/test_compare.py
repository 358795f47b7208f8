"""``natfleet compare`` against in-process moto with hand-computed expectations, agent answers
from the fixture root (tests/data/root), and one run in the real lab."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from moto import mock_aws

import natfleet.lab
from natfleet import agent, aws, cloudwatch
from natfleet import compare as cmp
from natfleet.answer import Answer, check_answer
from natfleet.cli import main
from natfleet.commands import compare as compare_cmd
from natfleet.config import Prices
from natfleet.lab import aws as lab_aws
from natfleet.lab.state import MOTO_CREDENTIALS, LabBox
from natfleet.models import Device, HostError, HostResult, MetricSeries, Target
from tests.conftest import DATA

REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[1]
UNPRICED = "m5.large"  # a real type the built-in price list does not have
# The window: one whole hour, two hours ago, so the numbers below do not depend on the clock.
BASE = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
BASE -= dt.timedelta(hours=2)
WINDOW = ["--since", BASE.isoformat(), "--until", (BASE + dt.timedelta(hours=1)).isoformat()]
WINDOW += ["--period", "60"]

# Seeded series, a point a minute from BASE + 1 min (metric: values).
GATEWAY_SERIES = {
    "ActiveConnectionCount": [100, 400, 250, 300],
    "BytesInFromSource": [1e8, 1e8, 1e8, 1e8],
    "BytesOutToDestination": [1e8, 1e8, 1e8, 1e8],
    "BytesInFromDestination": [2e8, 2e8, 2e8, 2e8],
    "PacketsOutToDestination": [1000, 1000, 1000, 1000],
    "PacketsInFromDestination": [1500, 1500, 1500, 1500],
    "PacketsDropCount": [0, 0, 0, 0],  # a real 0, not "no data"
    "ErrorPortAllocation": [0, 0, 5, 0],
}
NAT_A_SERIES = {
    "NetworkIn": [1000, 2000, 3000],
    "NetworkOut": [500, 500, 500],
    "NetworkPacketsIn": [10, 20, 30],
    "NetworkPacketsOut": [5, 5, 5],
}
NAT_A_CWAGENT = [3, 7, 5]  # fck-nat ConnectionEstablishedCount
NAT_B_SERIES = {"NetworkIn": [0, 0]}  # NetworkOut and the rest: no data

# By hand: the gateway processed (bytes in from the sources, 4 x 1e8) + (bytes in from the
# destinations, 4 x 2e8) = 1.2e9 bytes in 3,600 s, so
# 1.2e9 x 720 = 864e9 bytes (864 GB) in 30 days; 0.045 x 730 + 0.045 x 864 = 32.85 + 38.88.
GATEWAY_EXPECTED = {
    "conns_now": 300.0,  # the last point
    "conns_peak": 400.0,
    "bytes_out": 4e8,
    "bytes_in": 8e8,
    "packets_out": 4000.0,
    "packets_in": 6000.0,
    "drops": 0.0,
    "port_errors": 5.0,
    "gb_month": 864.0,
    "monthly_cost": 71.73,
    "cost_note": "",
    "counters": "window",
    "table_fill_pct": None,
    "ena_exceeded": None,
}
GATEWAY_BOUND = 100 * 400 / 55_000  # one Elastic IP: 0.727...%
# tests/data/root: 11 flows, 4 TCP SNAT ESTABLISHED, insert_failed 18, drop 1, early_drop 4,
# ports 32768-60999 (28,232), worst destination 2 ports -> 2 / 28232 = 0.007% -> 0.01.
NAT_A_EXPECTED = {
    "type": "t4g.nano",
    "conns_now": 4,
    "conns_peak": 7.0,
    "bytes_in": 6000.0,
    "bytes_out": 1500.0,
    "packets_in": 60.0,
    "packets_out": 15.0,
    "drops": 5.0,  # drop 1 + early_drop 4
    "port_errors": 18,  # insert_failed
    "ena_exceeded": None,  # no ENA interface: no data, not 0
    "table_fill_pct": 0.0,  # 11 / 262144
    "port_pressure_pct": 0.01,
    "counters": "since boot",
    "monthly_cost": 3.066,  # 0.0042 x 730
    "gb_month": None,
    "error": "",
    "conntrack": {"insert_failed": 18, "drop": 1, "early_drop": 4},
}


def fixture_answer() -> Answer:
    """The agent's real summary of tests/data/root, checked at the boundary like a box's."""
    raw = agent.handle(cmp.AGENT_REQUEST, agent.LocalSources(str(DATA / "root")))
    return check_answer("nat-a", cmp.AGENT_REQUEST, raw)


def put(cw, namespace: str, dimension: str, resource: str, series: dict) -> None:
    dims = [{"Name": dimension, "Value": resource}]
    data = [
        {
            "MetricName": metric,
            "Dimensions": dims,
            "Timestamp": BASE + dt.timedelta(minutes=i + 1),
            "Value": float(v),
        }
        for metric, values in series.items()
        for i, v in enumerate(values)
    ]
    cw.put_metric_data(Namespace=namespace, MetricData=data)


@pytest.fixture
def world(monkeypatch):
    """moto with NAT instance A (t4g.nano, answers), B (unpriced, SSH fails), a gateway."""
    for key, value in {**MOTO_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name=REGION)
        box = LabBox("nat-a", "ns-a", "198.19.255.11", "", "", "", "")
        info = lab_aws.build_world(ec2, [box])
        subnet = ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": ["nflab-mgmt"]}])
        nat_b = ec2.run_instances(
            ImageId=lab_aws.AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType=UNPRICED,
            SubnetId=subnet["Subnets"][0]["SubnetId"],
            PrivateIpAddress="198.19.255.12",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": "Name", "Value": "nat-b"}, {"Key": "Role", "Value": "nat"}],
                }
            ],
        )["Instances"][0]["InstanceId"]
        cw = boto3.client("cloudwatch", region_name=REGION)
        gw = info["nat_gateway_id"]
        assert box.instance_id is not None
        put(cw, "AWS/NATGateway", "NatGatewayId", gw, GATEWAY_SERIES)
        put(cw, "AWS/EC2", "InstanceId", box.instance_id, NAT_A_SERIES)
        put(
            cw,
            "fck-nat",
            "InstanceId",
            box.instance_id,
            {"ConnectionEstablishedCount": NAT_A_CWAGENT},
        )
        put(cw, "AWS/EC2", "InstanceId", nat_b, NAT_B_SERIES)
        results = [
            HostResult(
                Target("nat-a", "198.19.255.11", instance_id=box.instance_id), fixture_answer()
            ),
            HostError(
                Target("nat-b", "198.19.255.12", instance_id=nat_b), "connection refused", "connect"
            ),
        ]
        # the SSH side: the same fleet path as `summary`, with the agent's real answers
        monkeypatch.setattr(compare_cmd, "run_from_args", lambda *args, **kwargs: results)
        yield {"nat_a": box.instance_id, "nat_b": nat_b, "gateway": gw}


def run_json(capsys, *extra: str) -> tuple[int, dict]:
    code = main(["compare", *WINDOW, "--format", "json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_json_rows_match_the_hand_computed_numbers(world, capsys):
    code, data = run_json(capsys)
    assert code == 3  # nat-b's SSH failed: some targets failed
    rows = {r["id"]: r for r in data["rows"]}
    assert [r["kind"] for r in data["rows"]] == ["instance", "instance", "gateway"]
    assert set(data["rows"][0]) == set(cmp.ROW_KEYS)
    assert data["window"]["seconds"] == 3600 and data["window"]["period"] == 60
    assert data["prices"]["file"] is None and data["prices"]["estimate"] is True

    gateway = rows[world["gateway"]]
    assert {k: gateway[k] for k in GATEWAY_EXPECTED} == GATEWAY_EXPECTED
    assert gateway["port_pressure_pct"] == pytest.approx(GATEWAY_BOUND)
    assert gateway["port_pressure_bound"] is True
    assert gateway["type"] == "nat-gateway" and gateway["name"] == "nflab-natgw"

    nat_a = rows[world["nat_a"]]
    assert {k: nat_a[k] for k in NAT_A_EXPECTED} == NAT_A_EXPECTED
    assert nat_a["port_pressure_bound"] is False


def test_failed_ssh_keeps_cloudwatch_and_unknown_type_has_no_price(world, capsys):
    _code, data = run_json(capsys)
    nat_b = next(r for r in data["rows"] if r["id"] == world["nat_b"])
    assert nat_b["error"] == "connect: connection refused"
    assert nat_b["bytes_in"] == 0.0  # CloudWatch said 0: shown as 0
    assert nat_b["bytes_out"] is None  # CloudWatch said nothing: no data
    assert nat_b["conns_now"] is None and nat_b["conns_peak"] is None
    assert nat_b["monthly_cost"] is None and nat_b["cost_note"] == "no price"
    assert nat_b["type"] == UNPRICED


def table_rows(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """The table's header cells and its rows' cells by device (cells are 2+ spaces apart)."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("DEVICE"))
    split = [re.split(r"  +", line.strip()) for line in lines[at:]]
    header = split[0]
    rows = {cells[0]: cells for cells in split[1:] if len(cells) > 3}
    return header, rows


def cell(header: list[str], row: list[str], column: str) -> str:
    return row[header.index(column)]


COMPACT = ["DEVICE", "KIND", "CONNS NOW", "PEAK", "BYTES OUT", "DROPS", "PORT ERR", "FILL"]
COMPACT += ["PORT USE", "PER MONTH"]
WIDE = ["REGION", "TYPE", "BYTES IN", "PKTS OUT", "PKTS IN", "COUNTERS", "ENA EXC", "GB/MONTH"]


def test_table_fits_120_columns_and_says_no_data_na_no_price(world, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["compare", *WINDOW]) == 3
    captured = capsys.readouterr()
    assert max(len(line) for line in captured.out.splitlines()) <= 120
    header, rows = table_rows(captured.out)
    assert header == [*COMPACT, "ERROR"]  # nat-b failed: the ERROR column is there
    gateway, nat_a, nat_b = rows["nflab-natgw"], rows["nat-a"], rows["nat-b"]
    assert cell(header, gateway, "DROPS") == "0"  # a real 0
    assert cell(header, gateway, "PORT USE") == "<=0.73%"
    assert (
        cell(header, gateway, "FILL") == "n/a" and cell(header, gateway, "PER MONTH") == "71.73 USD"
    )
    assert cell(header, gateway, "CONNS NOW") == "300" and cell(header, gateway, "PEAK") == "400"
    assert cell(header, nat_a, "FILL") == "0.00%" and cell(header, nat_a, "PORT USE") == "0.01%"
    assert cell(header, nat_a, "PER MONTH") == "3.07 USD" and cell(header, nat_a, "PEAK") == "7"
    assert cell(header, nat_b, "PER MONTH") == "no price"
    assert cell(header, nat_b, "BYTES OUT") == "-"  # no data, not 0
    assert cell(header, nat_b, "ERROR").startswith("connect: connection ")  # cut to fit: …
    lines = captured.out.splitlines()
    assert lines[0] == f"window {WINDOW[1][:19]}Z to {WINDOW[3][:19]}Z, 60 s points"
    assert lines[-2].startswith("PER MONTH: estimates (us-east-1, USD, on-demand, data transfer")
    # a failed box is said once: in the table on a terminal, on stderr when piped (here)
    assert "natfleet: nat-b (" in captured.err and "connection refused" in captured.err


def test_wide_table_shows_every_column_and_full_labels(world, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["compare", *WINDOW, "-o", "wide"]) == 3
    header, rows = table_rows(capsys.readouterr().out)
    assert all(column in header for column in COMPACT + WIDE + ["ERROR"])
    gateway = rows[f"nflab-natgw ({world['gateway']})"]
    assert (
        cell(header, gateway, "ENA EXC") == "n/a" and cell(header, gateway, "GB/MONTH") == "864.00"
    )
    assert cell(header, gateway, "COUNTERS") == "window"
    assert cell(header, rows[f"nat-a ({world['nat_a']})"], "TYPE") == "t4g.nano"
    nat_b = rows[f"nat-b ({world['nat_b']})"]
    assert cell(header, nat_b, "BYTES IN") == "0B" and cell(header, nat_b, "BYTES OUT") == "-"
    assert cell(header, nat_b, "ERROR") == "connect: connection refused"  # wide: never cut


def test_columns_empty_for_every_row_are_left_out(world, capsys, monkeypatch):
    answered = [
        HostResult(Target("nat-a", "198.19.255.11", instance_id=world["nat_a"]), fixture_answer()),
        HostResult(Target("nat-b", "198.19.255.12", instance_id=world["nat_b"]), fixture_answer()),
    ]
    monkeypatch.setattr(compare_cmd, "run_from_args", lambda *args, **kwargs: answered)
    assert main(["compare", *WINDOW]) == 0
    header, rows = table_rows(capsys.readouterr().out)
    assert header == COMPACT  # no error anywhere: no ERROR column
    assert cell(header, rows["nat-b"], "PEAK") == "-"  # no data is said, never left out


def test_csv_is_one_plain_value_per_cell(world, capsys):
    assert main(["compare", *WINDOW, "--format", "csv"]) == 3
    captured = capsys.readouterr()
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(captured.out))}
    keys = list(next(iter(rows.values())))
    assert keys == [c.key for c in compare_cmd.COLUMNS if c.csv]
    assert {"conntrack", "ena", "short_label"}.isdisjoint(keys)
    gateway, nat_a, nat_b = rows[world["gateway"]], rows[world["nat_a"]], rows[world["nat_b"]]
    assert gateway["monthly_cost"] == "71.73" and gateway["drops"] == "0"
    assert gateway["conns_peak"] == "400" and gateway["gb_month"] == "864"
    assert nat_b["bytes_out"] == "" and nat_b["bytes_in"] == "0"  # no data vs a real 0
    assert nat_b["error"] == "connect: connection refused"
    # the conntrack counters in columns of their own, not key=value;... in one cell
    assert (nat_a["conntrack_insert_failed"], nat_a["conntrack_drop"]) == ("18", "1")
    assert nat_a["conntrack_early_drop"] == "4" and nat_a["port_pressure_pct"] == "0.01"
    assert gateway["port_pressure_bound"] == "true" and nat_a["port_pressure_bound"] == "false"
    assert gateway["label"] == f"nflab-natgw ({world['gateway']})"
    for row in rows.values():
        for value in row.values():
            assert not re.search(r"[{};]|^(True|False|None)$|\.0$|e-\d", value), value
    assert "PER MONTH: estimates" in captured.err  # the footer never breaks the CSV


def test_json_is_the_envelope_with_window_prices_and_errors(world, capsys):
    code, data = run_json(capsys)
    assert code == 3
    assert (data["natfleet"], data["command"]) == (1, "compare")
    assert data["generated"].endswith("Z") and data["window"]["start"] == WINDOW[1][:19] + "Z"
    assert data["prices"]["currency"] == "USD"
    (error,) = data["errors"]
    assert error["target"]["name"] == "nat-b" and error["kind"] == "connect"
    assert error["target"]["instance_id"] == world["nat_b"]
    assert next(r for r in data["rows"] if r["id"] == world["nat_b"])["error"].startswith("connect")

    assert main(["compare", *WINDOW, "-o", "jsonl"]) == 3
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("id") for r in lines[:3]] == [r["id"] for r in data["rows"]]
    assert lines[3]["kind"] == "connect"  # then the error, a line of its own


def test_cloudwatch_progress_on_a_terminal_only(world, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "120")
    assert main(["compare", *WINDOW]) == 3
    assert "CloudWatch" not in capsys.readouterr().err
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setattr("sys.stdout", screen)
    assert main(["compare", *WINDOW]) == 3
    text = screen.getvalue()
    assert "natfleet: CloudWatch: 0/1 batches" in text
    assert re.search(r"natfleet: CloudWatch: 1/1 batches, 1 page, [\d,]+ points", text)
    assert text.rindex("\r\x1b[K") < text.index("window ")  # erased before the table


PRICES = """\
region = "eu-west-1"
currency = "EUR"
[nat_gateway]
hourly = 0.1
per_gb_processed = 0.01
[instance_hourly]
"m5.large" = 0.096
"""


def test_prices_file_overrides_the_defaults(world, capsys, tmp_path, monkeypatch):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    _code, data = run_json(capsys, "--prices", str(prices))
    rows = {r["id"]: r for r in data["rows"]}
    # 0.1 x 730 + 0.01 x 864 = 73 + 8.64; m5.large 0.096 x 730; t4g.nano no longer listed
    assert rows[world["gateway"]]["monthly_cost"] == 81.64
    assert rows[world["nat_b"]]["monthly_cost"] == pytest.approx(70.08)
    assert rows[world["nat_a"]]["monthly_cost"] is None
    assert rows[world["nat_a"]]["cost_note"] == "no price"
    assert data["prices"]["file"] == str(prices) and data["prices"]["currency"] == "EUR"

    config = tmp_path / "natfleet.toml"
    config.write_text('[prices]\nfile = "prices.toml"\n')
    monkeypatch.setenv("NATFLEET_CONFIG", str(config))
    assert main(["compare", *WINDOW]) == 3
    out = capsys.readouterr().out
    assert "81.64 EUR" in out and "(eu-west-1, EUR, on-demand, data transfer not" in out
    assert f"from {prices}" in out


def test_plot_writes_a_png(world, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="pip install 'natfleet[plot]'")
    png = tmp_path / "compare.png"
    assert main(["compare", *WINDOW, "--format", "json", "--plot", str(png)]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in capsys.readouterr().err


def test_plot_is_readable_units_utc_one_style_per_device_series_apart(world, capsys):
    pytest.importorskip("matplotlib", reason="pip install 'natfleet[plot]'")
    window = cmp.Window.from_options(WINDOW[1], WINDOW[3], "60")
    report = cmp.compare(
        {None: aws.make_session(region=REGION)}, devices_of(world), [], Prices(), window
    )
    for row in report.rows:
        if row["id"] == world["nat_a"]:
            row["conns_now"] = 4  # what the agent said
    fig = cmp.plot_figure(report.rows, report.metrics, window)
    connections, bytes_out, bytes_in, drops, port_errors = fig.axes
    assert "UTC" in fig.axes[-1].get_xlabel()
    assert [ax.get_ylabel().split(" (")[0] for ax in fig.axes] == [
        "connections", "bytes/s", "bytes/s", "packets per period", "errors per period",
    ]  # fmt: skip
    # the instance's connections over time: a series, not one dot; the agent's now: a marker
    lines = {line.get_label(): line for line in connections.get_lines()}
    series = lines["nat-a ConnectionEstablishedCount"]
    assert list(series.get_ydata()) == [float(v) for v in NAT_A_CWAGENT]
    now = lines["nat-a TCP SNAT ESTABLISHED now (agent)"]
    assert list(now.get_ydata()) == [4] and now.get_marker() == series.get_marker()
    # one look per device, the same in every panel, and different between devices
    looks = {}
    for ax in (connections, bytes_out, bytes_in):
        for line in ax.get_lines():
            device = line.get_label().split()[0]
            look = (line.get_color(), line.get_marker())
            assert looks.setdefault(device, look) == look
    assert len(set(looks.values())) == len(looks) == 3
    # drops and port errors each in their own panel: two zero series cannot hide each other
    assert [line.get_label() for line in drops.get_lines()] == ["nflab-natgw PacketsDropCount"]
    assert [line.get_label() for line in port_errors.get_lines()] == [
        "nflab-natgw ErrorPortAllocation"
    ]
    # bytes per second: the gateway's 1e8 bytes a minute
    (gateway_out,) = [x for x in bytes_out.get_lines() if x.get_label().startswith("nflab")]
    assert max(gateway_out.get_ydata()) == pytest.approx(1e8 / 60)
    cmp.pyplot().close(fig)


def devices_of(world) -> list[Device]:
    from natfleet import discovery

    return discovery.discover(aws.make_session(region=REGION), [REGION])


def test_plot_without_matplotlib_says_how_to_install(world, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert main(["compare", *WINDOW, "--plot", str(tmp_path / "x.png")]) == 1
    captured = capsys.readouterr()
    assert "pip install 'natfleet[plot]'" in captured.err and captured.out == ""


# --- pieces -------------------------------------------------------------------------------


def test_agent_columns_ena_and_no_answer():
    answer = fixture_answer()
    ena = {
        "eth0": {"bw_in_allowance_exceeded": 2, "conntrack_allowance_available": 900},
        "eth1": {"pps_allowance_exceeded": 5},
    }
    answer.facts = dataclasses.replace(answer.facts, ena=ena)
    columns = cmp.agent_columns(HostResult(Target("a", "192.0.2.1"), answer))
    assert columns["ena_exceeded"] == 7  # the available allowance is not an excess
    assert columns["ena"]["eth1"] == {"pps_allowance_exceeded": 5}
    assert cmp.agent_columns(None) == {"counters": "since boot"}
    answer.facts = dataclasses.replace(answer.facts, stats=None)
    assert cmp.agent_columns(HostResult(Target("a", "192.0.2.1"), answer))["drops"] is None


def test_a_box_not_found_in_aws_gets_its_own_row():
    window = cmp.Window(BASE, BASE + dt.timedelta(hours=1), 60)
    result = HostResult(Target("lab", "192.0.2.7"), fixture_answer())
    (row,) = cmp.compare_rows([], {}, [result], Prices(), window)
    assert row["id"] == "192.0.2.7" and row["conns_now"] == 4
    assert row["bytes_in"] is None and row["cost_note"] == "no price"


def test_gateway_bound_and_addresses():
    two = Device("gateway", "nat-1", REGION, public_ip="198.51.100.1")
    two.addresses = ["198.51.100.1", "198.51.100.2", "10.0.0.1", "10.0.0.2"]
    assert cmp.gateway_address_count(two) == 2
    private = Device("gateway", "nat-2", REGION, addresses=["10.0.0.9"])
    assert cmp.gateway_address_count(private) == 1
    assert cmp.gateway_port_bound(11_000, 2) == 10.0
    assert cmp.gateway_port_bound(None, 1) is None
    window = cmp.Window(BASE, BASE + dt.timedelta(hours=1), 60)
    empty = cmp.gateway_row(two, {}, Prices(), window)
    assert empty["conns_peak"] is None and empty["cost_note"] == "no data"
    active = MetricSeries("nat-1", "ActiveConnectionCount", "Maximum", [BASE], [0.0], period=60)
    zero = cmp.gateway_row(two, {"ActiveConnectionCount": active}, Prices(), window)
    assert zero["conns_peak"] == 0.0 and zero["port_pressure_pct"] == 0.0


# --- the real lab -------------------------------------------------------------------------


def inside_tcp_snat_established(box) -> int:
    """What the agent reports inside the box's own namespace."""
    argv = natfleet.lab.netns_argv(
        box.netns, [sys.executable, "-m", "natfleet", "summary", "--local", "--format", "json"]
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out)["rows"][0]["summary"]["tcp_snat_established"]


def gateway_points_in(window: dict, lab) -> dict[str, list[float]]:
    """The lab's seeded gateway series, only the points inside the (aligned) window."""
    first = dt.datetime.fromisoformat(lab.aws["gateway_metrics"])
    start, end = cloudwatch.align(
        cloudwatch.parse_time(window["start"]),
        cloudwatch.parse_time(window["end"]),
        window["period"],
    )
    inside = [start <= first + dt.timedelta(minutes=i) < end for i in range(lab_aws.GATEWAY_POINTS)]
    return {
        metric: [v for v, keep in zip(values, inside) if keep]
        for metric, values in lab_aws.gateway_series().items()
    }


@pytest.mark.lab
def test_compare_in_the_lab(lab, monkeypatch, capsys):
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    first = dt.datetime.fromisoformat(lab.aws["gateway_metrics"])
    age = dt.datetime.now(dt.timezone.utc) - first
    # the series is published once, when the lab comes up: reach back to it on an old lab
    since = "1h" if age < dt.timedelta(minutes=50) else first.isoformat()
    before = {box.name: inside_tcp_snat_established(box) for box in lab.boxes}
    assert main(["compare", "--since", since, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    after = {box.name: inside_tcp_snat_established(box) for box in lab.boxes}

    rows = {r["id"]: r for r in data["rows"]}
    for box in lab.boxes:
        row = rows[box.instance_id]
        assert row["kind"] == "instance" and row["name"] == box.name and row["error"] == ""
        assert row["conns_now"] in (before[box.name], after[box.name])
        assert row["monthly_cost"] == pytest.approx(0.0042 * 730)
        assert row["bytes_in"] is not None and row["table_fill_pct"] is not None

    gateway = rows[lab.aws["nat_gateway_id"]]
    expected = gateway_points_in(data["window"], lab)
    assert expected["ActiveConnectionCount"], "no seeded gateway point in the window"
    assert gateway["conns_peak"] == max(expected["ActiveConnectionCount"])
    assert gateway["conns_now"] == expected["ActiveConnectionCount"][-1]
    assert gateway["bytes_out"] == sum(expected["BytesOutToDestination"])
    assert gateway["bytes_in"] == sum(expected["BytesInFromDestination"])
    assert gateway["port_errors"] == sum(expected["ErrorPortAllocation"])
    assert gateway["drops"] == sum(expected["PacketsDropCount"])
    processed = sum(expected["BytesInFromSource"]) + sum(expected["BytesInFromDestination"])
    month = processed * 30 * 86400 / data["window"]["seconds"]
    assert gateway["monthly_cost"] == pytest.approx(0.045 * 730 + 0.045 * month / 1e9)
    assert gateway["port_pressure_pct"] == pytest.approx(100 * gateway["conns_peak"] / 55_000)
    assert [r["kind"] for r in data["rows"]].count("instance") == len(lab.boxes) == 3
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
