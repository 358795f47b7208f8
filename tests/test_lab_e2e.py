"""The whole pipeline on the lab: discovery through the moto server, the agent over real SSH,
real conntrack tables, compared with what each box says about itself and with netstat-nat."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from natfleet.cli import main

pytestmark = pytest.mark.lab


@pytest.fixture
def lab_env(lab, monkeypatch):
    """natfleet pointed at the lab: its moto server, ssh_config and known_hosts."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    return lab


def run_json(capsys, *argv: str):
    code = main([*argv, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def in_box(netns: str, *argv: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def row_key(row: dict) -> tuple:
    o, r = row["orig"], row["reply"]
    return (row["proto"], row["nat"], o["src"], o.get("sport"), o["dst"], o.get("dport"),
            r["src"], r["dst"], r.get("dport"))  # fmt: skip


def local_rows(netns: str) -> Counter:
    out = in_box(netns, sys.executable, "-m", "natfleet", "local", "-n", "--format", "json")
    return Counter(row_key(r) for r in json.loads(out))


def test_discovery_through_the_moto_server_finds_every_box_and_how(lab_env, capsys):
    code, devices = run_json(capsys, "discover")
    assert code == 0
    instances = {d["name"]: d for d in devices if d["kind"] == "instance"}
    assert set(instances) == {box.name for box in lab_env.boxes}
    for box in lab_env.boxes:
        found = instances[box.name]
        assert found["private_ip"] == box.mgmt_ip
        assert "tag:Role=nat" in found["found_by"]
        assert "source-dest-check:off" in found["found_by"]
        assert any(reason.startswith("route:") for reason in found["found_by"])
    assert any("via eni-" in r for r in instances["nflab-box2"]["found_by"])
    assert [d["kind"] for d in devices].count("gateway") == 1


def test_merged_table_is_the_union_of_each_box_own_view(lab_env, capsys):
    """Live traffic moves a little, so: rows seen by both of two local reads on each box
    must be in the fleet table, and every fleet row must be in one of the local reads."""
    before = {box.name: local_rows(box.netns) for box in lab_env.boxes}
    code, rows = run_json(capsys, "conns", "-n")
    after = {box.name: local_rows(box.netns) for box in lab_env.boxes}
    assert code == 0
    for box in lab_env.boxes:
        fleet = Counter(row_key(r) for r in rows if r["target"]["name"] == box.name)
        stable = before[box.name] & after[box.name]
        assert stable, f"no translated flows on {box.name}"
        assert not stable - fleet, f"{box.name}: rows missing from the fleet table"
        assert not fleet - (before[box.name] | after[box.name]), f"{box.name}: extra rows"
        assert all(r["target"]["instance_id"].startswith("i-") for r in rows)


def test_summary_has_one_row_per_box_and_a_total(lab_env, capsys):
    code, summary = run_json(capsys, "summary")
    assert code == 0
    boxes = {b["target"]["name"]: b for b in summary["boxes"]}
    assert set(boxes) == {box.name for box in lab_env.boxes}
    for box in lab_env.boxes:
        answer = boxes[box.name]
        assert answer["source"] == "/proc/net/nf_conntrack"
        by_nat = answer["summary"]["by_nat"]
        assert by_nat["snat"] > 0 and by_nat["dnat"] > 0
        assert by_nat["local"] > 0 and by_nat["routed"] > 0
        assert box.public_ip in answer["addresses"]
        assert answer["transport"]["bytes_received"] < 16 * 1024
    assert summary["total"]["flows"] == sum(b["summary"]["flows"] for b in boxes.values())


@pytest.mark.parametrize("flag", ["-S", "-D", "-L", "-R"])
def test_lab_box_agrees_with_netstat_nat(lab_env, flag):
    """Real traffic on a lab box: every row netstat-nat shows in two reads, natfleet shows
    (protocol, source, destination), and natfleet shows nothing netstat-nat never saw.
    (States are compared on the exact table in test_netstat_compare: netstat-nat prints none
    for a replied ICMP flow and guesses UDP's.)"""
    netns = lab_env.boxes[0].netns

    def netstat() -> Counter:
        out = in_box(netns, "netstat-nat", "-n", "-o", flag)
        return Counter(tuple(line.split()[:3]) for line in out.splitlines())

    first = netstat()
    ours = Counter(
        tuple(line.split()[:3])
        for line in in_box(
            netns, sys.executable, "-m", "natfleet", "local", "-n", "-o", flag
        ).splitlines()
    )
    second = netstat()
    stable = first & second
    assert stable, f"netstat-nat {flag} saw nothing on the lab box"
    assert not stable - ours
    assert not ours - (first | second)


def test_hostile_tag_values_reach_no_shell_and_break_no_table(lab_env, capsys, tmp_path):
    """A NAT instance whose Name is hostile (quotes, $(...), newline, bidi, very long) is
    read like any other, and nothing it says is run."""
    import boto3

    marker = tmp_path / "pwned"
    hostile = (
        f'nat\'; touch {marker}; echo "$(touch {marker})" `touch {marker}`\n'
        "\u202egnp.exe \u00e9" + "x" * 200
    )
    box = lab_env.boxes[0]
    ec2 = boto3.client("ec2", region_name=lab_env.aws.get("region", "us-east-1"))
    subnet = ec2.describe_instances(InstanceIds=[box.instance_id])["Reservations"][0]["Instances"][
        0
    ]["SubnetId"]
    extra = ec2.run_instances(
        ImageId="ami-760aaa0f",
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "Name", "Value": hostile}, {"Key": "Role", "Value": "nat"}],
            }
        ],
    )["Instances"][0]["InstanceId"]
    try:
        # its address is not a lab box, so it is a row with an error; the boxes still print
        code = main(["summary", "--timeout", "5", "--format", "csv"])
        out = capsys.readouterr()
        assert code == 3
        assert extra in out.out
        for lab_box in lab_env.boxes:
            assert lab_box.name in out.out
        code = main(["conns", "-n", "--timeout", "5"])
        out = capsys.readouterr()
        assert code == 3
        assert "\u202e" not in out.out  # bidi control shown escaped, never raw
        assert not marker.exists()
    finally:
        ec2.terminate_instances(InstanceIds=[extra])
