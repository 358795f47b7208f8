"""The whole pipeline on the lab: discovery through the moto server, the agent over real SSH,
real conntrack tables, compared with what each box says about itself and with netstat-nat."""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from natfleet import agent, remote, ssh
from natfleet.cli import main
from natfleet.lab import login, topology
from natfleet.limits import Deadline
from natfleet.models import Target

pytestmark = pytest.mark.lab


@pytest.fixture
def lab_env(lab, monkeypatch):
    """natfleet pointed at the lab: its moto server, ssh_config and known_hosts."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    return lab


def run_json(capsys, *argv: str):
    """(exit code, the JSON envelope natfleet printed: docs/json.md)."""
    code = main([*argv, "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert data["natfleet"] == 1 and data["command"] == argv[0]
    return code, data


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
    return Counter(row_key(r) for r in json.loads(out)["rows"])


def test_discovery_through_the_moto_server_finds_every_box_and_how(lab_env, capsys):
    code, data = run_json(capsys, "discover")
    assert code == 0
    devices = data["rows"]
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
    code, data = run_json(capsys, "conns", "-n")
    rows = data["rows"]
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
    boxes = {b["target"]["name"]: b for b in summary["rows"]}
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


# --- logging in like a NAT instance; natfleet not counting itself ----------------------------


def ssh_box(lab, host: str, command: str) -> subprocess.CompletedProcess:
    """OpenSSH with the lab's ssh_config: ``host`` is ``nflab-box1`` or ``root@nflab-box1``."""
    argv = ["ssh", "-F", lab.ssh_config, "-o", "BatchMode=yes", host, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_the_lab_logs_in_as_its_sudo_user_like_a_nat_instance(lab):
    box = lab.boxes[0]
    entry = pwd.getpwnam(lab.user)
    assert lab.user == login.USER and entry.pw_shell == "/bin/sh"  # no root shell start-up
    assert Path(entry.pw_dir) == login.home_of(Path(lab.state_dir))
    who = ssh_box(lab, box.name, "id -un")
    assert (who.returncode, who.stdout, who.stderr) == (0, f"{lab.user}\n", "")
    assert ssh_box(lab, f"root@{box.name}", "id -un").stdout == "root\n"
    # the sudo rule: natfleet's raw fallback command runs as root, exactly it and nothing else
    raw = ssh_box(lab, box.name, ssh.SUDO_PREFIX + agent.RAW_COMMAND)
    assert raw.returncode == 0, raw.stderr
    assert f"{agent.RAW_MARK}file {agent.TABLE_PROC}\n" in raw.stdout and " src=" in raw.stdout
    for other in ("cat /proc/net/nf_conntrack", "python3 -c pass", agent.RAW_COMMAND + " x"):
        refused = ssh_box(lab, box.name, ssh.SUDO_PREFIX + other)
        assert refused.returncode != 0 and "password is required" in refused.stderr, other


class Collect:
    """A sink for remote.run_agent: the box's bytes, and ``snapshot()`` taken when the first
    arrive (the agent has read its table; its SSH session is still open)."""

    def __init__(self, snapshot: Optional[Callable[[], Any]] = None) -> None:
        self.received = 0
        self.data = bytearray()
        self.take = snapshot
        self.snapshot: Any = None

    def feed(self, chunk: bytes) -> None:
        if not self.received and self.take:
            self.snapshot = self.take()
        self.received += len(chunk)
        self.data += chunk

    def feed_raw_answer(self, answer: dict) -> None:
        raise AssertionError("every lab box has python3")


def read_box(target: Target, request: dict, snapshot=None):
    """(ExecResult, header, rows, snapshot) of the agent run over natfleet's own SSH."""
    sink = Collect(snapshot)
    connector = ssh.SshConnector(ssh.SshOptions())
    result = remote.run_agent(connector, target, request, sink, Deadline(30), cap=1 << 24)
    header, *rows = [json.loads(line) for line in sink.data.decode("ascii").splitlines()]
    return result, header, rows, sink.snapshot


def conntrack_tuples(netns: str) -> list[tuple]:
    """(proto, src, sport, dst, dport, state) of each entry's original tuple, as
    ``conntrack -L`` in the box's namespace shows it (ports as int, None without)."""
    found = []
    for line in in_box(netns, "conntrack", "-L").splitlines():
        fields = line.split()
        first = {}
        for field in fields:
            key, _, value = field.partition("=")
            if key in ("src", "dst", "sport", "dport") and key not in first:
                first[key] = value
        state = fields[3] if fields[0] == "tcp" and "=" not in fields[3] else None
        ports = [int(first[k]) if k in first else None for k in ("sport", "dport")]
        found.append((fields[0], first["src"], ports[0], first["dst"], ports[1], state))
    return found


def row_tuple(row: dict) -> tuple:
    o = row["orig"]
    return (row["proto"], o["src"], o.get("sport"), o["dst"], o.get("dport"), row["state"])


def test_the_agent_leaves_out_its_own_session_and_says_so(lab_env):
    box = lab_env.boxes[0]
    request = {"mode": "list", "filters": {"nat": ["local"]}}
    result, header, rows, table = read_box(
        Target(name=box.name, host=box.name), request, lambda: conntrack_tuples(box.netns)
    )
    assert result.user == lab_env.user and result.where.startswith(f"{lab_env.user}@")  # sudo
    own = header["own_session"]
    assert own == {
        "src": topology.MGMT_GATEWAY, "sport": own["sport"], "dst": box.mgmt_ip, "dport": 22,
        "proto": "tcp",
    }  # fmt: skip
    assert header["own_flows"] == 1
    session = ("tcp", own["src"], own["sport"], own["dst"], own["dport"], "ESTABLISHED")
    assert session in table  # the kernel had it while natfleet was connected ...
    assert session[:5] not in {row_tuple(r)[:5] for r in rows}  # ... and natfleet left it out
    held = [r for r in rows if r["orig"]["dport"] == 22 and r["state"] == "ESTABLISHED"]
    assert held  # other SSH sessions (the lab's held one) are still counted


def test_summary_counts_the_management_host_without_natfleets_own_session(lab_env):
    """What summary counts for the management host is what ``conntrack -L`` in the box showed
    at that moment, less natfleet's own session (other sessions to the shared lab may come
    and go in between: a few tries)."""
    box = lab_env.boxes[0]
    for _ in range(5):
        _result, header, _rows, table = read_box(
            Target(name=box.name, host=box.name),
            {"mode": "summary", "top": 1000},
            lambda: conntrack_tuples(box.netns),
        )
        counted = dict(map(tuple, header["summary"]["top_sources"])).get(topology.MGMT_GATEWAY)
        in_table = sum(1 for entry in table if entry[1] == topology.MGMT_GATEWAY)
        if (counted, header["summary"]["flows"]) == (in_table - 1, len(table) - 1):
            break
    assert header["own_flows"] == 1
    assert counted == in_table - 1 and header["summary"]["flows"] == len(table) - 1


def test_root_login_reads_the_same_box_without_sudo(lab_env):
    box = lab_env.boxes[0]
    request = {"mode": "summary"}
    as_root = read_box(Target(name=box.name, host=box.name, user="root"), request)
    as_user = read_box(Target(name=box.name, host=box.name), request)
    assert (as_root[0].user, as_user[0].user) == ("root", lab_env.user)
    for _result, header, _rows, _ in (as_root, as_user):
        assert header["ok"] is True and header["own_flows"] == 1
        assert header["own_session"]["dst"] == box.mgmt_ip
        assert box.public_ip in header["addresses"]
    assert as_root[1]["own_session"]["sport"] != as_user[1]["own_session"]["sport"]
