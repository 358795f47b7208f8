"""``natfleet discover`` and ``natfleet gateways`` run in-process against moto."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from moto import mock_aws

from natfleet.cli import main
from natfleet.commands.gateways import human, sparkline
from natfleet.lab import aws as lab_aws
from natfleet.lab.state import LabBox

REGION = "us-east-1"


@pytest.fixture
def moto_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name=REGION)
        boxes = [
            LabBox(f"nat-{i}", f"ns{i}", f"198.19.255.{10 + i}", "", "", "", "") for i in (1, 2)
        ]
        info = lab_aws.build_world(ec2, boxes)
        yield {"boxes": boxes, **info}


def test_discover_table_json_csv(moto_env, capsys):
    assert main(["discover"]) == 0
    table = capsys.readouterr().out
    assert "nat-1" in table and "route:rtb-" in table and "nat-gateway" in table
    assert "\u202e" not in table  # the hostile instance is not a NAT instance anyway

    assert main(["discover", "--format", "json"]) == 0
    devices = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in devices} == {"nat-1", "nat-2", "nflab-natgw"}
    nat2 = next(d for d in devices if d["name"] == "nat-2")
    assert nat2["found_by"][0] == "tag:Role=nat" and " via eni-" in nat2["found_by"][2]

    assert main(["discover", "--format", "csv", "--tag", "Role=nat"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["name"], r["found_by"]) for r in rows if r["kind"] == "instance"] == [
        ("nat-1", "tag:Role=nat"),
        ("nat-2", "tag:Role=nat"),
    ]


def test_hostile_tags_are_escaped_in_tables(moto_env, capsys):
    assert main(["discover", "--tag", "Role=nat ", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "\u202e" not in out and "\\u202e" in out
    assert "$(reboot)" in out  # printed as text, never run


def test_gateways_metrics_and_no_data(moto_env, capsys):
    import boto3

    cw = boto3.client("cloudwatch", region_name=REGION)
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    dims = [{"Name": "NatGatewayId", "Value": moto_env["nat_gateway_id"]}]
    cw.put_metric_data(
        Namespace="AWS/NATGateway",
        MetricData=[
            {
                "MetricName": "ActiveConnectionCount",
                "Dimensions": dims,
                "Timestamp": now - dt.timedelta(minutes=m),
                "Value": float(100 + m),
            }
            for m in range(1, 11)
        ],
    )
    assert main(["gateways", "--since", "30m", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "nflab-natgw"
    assert row["peak_active_connections"] == 110.0
    assert row["connection_attempts"] is None  # no data, not 0
    assert row["period"] == 60

    assert main(["gateways", "--since", "30m"]) == 0
    table = capsys.readouterr().out
    assert "nflab-natgw" in table and "no data" in table and "█" in table


def test_missing_credentials_exit_code_and_message(monkeypatch, capsys):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never anywhere real
    assert main(["discover"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: no AWS credentials: set AWS_PROFILE or run 'aws configure'")


def test_bad_time_is_a_usage_error(moto_env, capsys):
    assert main(["gateways", "--since", "yesterday"]) == 2
    assert "not 'yesterday'" in capsys.readouterr().err


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
