"""SSM Run Command, Instance Connect and `--via auto` on the lab, end to end (root).

A moto server of this test's own (natfleet.lab.ssm.SsmLab: 127.0.0.1, a free port) plays
AWS: its EC2 has the shared lab's three boxes and this lab's own (``nfssm1``: a table of
3,000 flows and no sshd; ``nfssm2``: an sshd with EC2 Instance Connect's
AuthorizedKeysCommand and no authorized key of its own; ``nfssm-x1``/``-x2``: instances with
no box), and its Run Command runs natfleet's script for real in each box's namespace (read
only on the shared boxes). The shared lab is never changed or restarted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natfleet import api, aws
from natfleet.lab import ssm as lab_ssm

pytestmark = pytest.mark.lab
BUCKET = "natfleet-out"
FLOWS = 3000


@pytest.fixture(scope="module")
def world(lab):
    with lab_ssm.SsmLab(boxes=2, shared=lab.boxes, lifetime=900) as ssm_lab:
        big, eic_box = ssm_lab.boxes
        ssm_lab.load_table(big, FLOWS)
        ssm_lab.load_table(eic_box, 3)
        ssm_lab.start_sshd(eic_box)
        session = aws.static_session("testing", "testing", "us-east-1")
        s3 = aws.client(session, "s3", endpoint_url=ssm_lab.endpoint)
        s3.create_bucket(Bucket=BUCKET)
        yield ssm_lab


def _ids(world, names):
    known = {b.name: b.instance_id for b in [*world.shared, *world.boxes, *world.extra]}
    return [arg for name in names for arg in ("--instance-id", known[name])]


SHARED = ("nflab-box1", "nflab-box2", "nflab-box3")


def natfleet(world, lab, *args, timeout=120):
    """Run the natfleet CLI against this lab's AWS and the shared lab's SSH; (exit, JSON)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ["HOME"],
        "NO_COLOR": "1",
        "NATFLEET_SSH_CONFIG": lab.ssh_config,
        "NATFLEET_KNOWN_HOSTS": lab.known_hosts,
        **world.env(),
    }
    done = subprocess.run(
        [sys.executable, "-m", "natfleet", *args, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _by_box(envelope):
    rows = {}
    for row in envelope["rows"]:
        rows.setdefault(row["target"]["name"], []).append(row)
    return rows, {e["target"]["name"]: e for e in envelope["errors"]}


def _flow_key(row):
    orig = row["orig"]
    return (row["target"]["name"], row["proto"], row["nat"], *sorted(orig.items()))


# --- the same answers as over SSH -------------------------------------------------------------


def test_summary_via_ssm_equals_ssh(world, lab):
    ids = _ids(world, SHARED)
    code_ssh, over_ssh = natfleet(world, lab, "summary", *ids)
    code_ssm, over_ssm = natfleet(world, lab, "summary", "--via", "ssm", *ids)
    assert (code_ssh, code_ssm) == (0, 0), (over_ssh["errors"], over_ssm["errors"])
    ssh_rows, _ = _by_box(over_ssh)
    ssm_rows, _ = _by_box(over_ssm)
    assert sorted(ssh_rows) == sorted(ssm_rows) == sorted(SHARED)
    for name in SHARED:
        a, b = ssh_rows[name][0], ssm_rows[name][0]
        assert a["max"] == b["max"] and a["hostname"] == b["hostname"]
        assert a["summary"]["port_range_size"] == b["summary"]["port_range_size"]
        # traffic is live, and SSM has no SSH session of natfleet's own to leave out
        flows_a, flows_b = a["summary"]["flows"], b["summary"]["flows"]
        assert abs(flows_a - flows_b) <= max(10, flows_a // 5), (name, flows_a, flows_b)
        assert set(a["summary"]["by_nat"]) <= set(b["summary"]["by_nat"]) | {"local"}


def test_conns_via_ssm_with_s3_output_equals_ssh(world, lab):
    ids = _ids(world, SHARED)
    _, before = natfleet(world, lab, "conns", "-n", *ids)
    code, over_ssm = natfleet(
        world, lab, "conns", "-n", "--via", "ssm", "--ssm-output-s3", f"{BUCKET}/runs",
        *_ids(world, (*SHARED, "nfssm1")),
    )  # fmt: skip
    _, after = natfleet(world, lab, "conns", "-n", *ids)
    assert code == 0, over_ssm["errors"]
    stable = {_flow_key(r) for r in before["rows"]} & {_flow_key(r) for r in after["rows"]}
    got = {_flow_key(r) for r in over_ssm["rows"]}
    assert stable and stable <= got
    rows, _ = _by_box(over_ssm)
    assert len(rows["nfssm1"]) == FLOWS  # past 24,000 characters: read from S3, whole
    session = aws.static_session("testing", "testing", "us-east-1")
    s3 = aws.client(session, "s3", endpoint_url=world.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]]
    assert any(k.endswith(f"/{world.boxes[0].instance_id}/awsrunShellScript/"
                          "0.awsrunShellScript/stdout") for k in keys)  # fmt: skip


def test_a_listing_past_24000_characters_without_s3_is_a_clear_error(world, lab):
    code, envelope = natfleet(
        world, lab, "conns", "-n", "--via", "ssm", *_ids(world, ("nflab-box1", "nfssm1"))
    )
    rows, errors = _by_box(envelope)
    assert code == 3 and "nflab-box1" in rows and "nfssm1" not in rows
    error = errors["nfssm1"]
    assert error["kind"] == "ssm_output" and "--ssm-output-s3 BUCKET[/PREFIX]" in error["error"]
    assert "24,000" in error["error"]


def test_the_s3_read_is_the_one_more_call_and_the_policy_has_it(world, monkeypatch):
    """Recorded, as tests/test_discovery.py records discovery's: a listing through S3 makes
    ssm:SendCommand, ssm:GetCommandInvocation and s3:GetObject, all in the policy."""
    from natfleet.ssm import SsmExecutor, SsmOptions

    for key, value in world.env().items():
        monkeypatch.setenv(key, value)
    made: set[str] = set()
    real_client = aws.client

    def recording_client(*args, **kwargs):
        client = real_client(*args, **kwargs)
        prefix = client.meta.service_model.endpoint_prefix
        client.meta.events.register(
            "before-call", lambda model, **kw: made.add(f"{prefix}:{model.name}")
        )
        return client

    monkeypatch.setattr(aws, "client", recording_client)
    big = world.boxes[0]
    target = api.Target(name=big.name, host=big.ip, instance_id=big.instance_id,
                        region="us-east-1")  # fmt: skip
    executor = SsmExecutor(SsmOptions(output_s3=f"{BUCKET}/calls"), api.sessions())
    [result] = api.read_fleet([target], api.list_request(), executor)
    assert len(result.answer.flows) == FLOWS
    assert made == {"ssm:SendCommand", "ssm:GetCommandInvocation", "s3:GetObject"}
    policy = json.loads((Path(__file__).parent.parent / "config" / "iam-policy.json").read_text())
    assert made <= {a for st in policy["Statement"] for a in st["Action"]}


# --- every failure its own row ----------------------------------------------------------------


def test_each_failing_box_is_its_own_row_while_the_others_print(world, lab):
    big, eic_box = world.boxes
    x1, x2 = world.extra
    only_python = world.folder / "only-python"  # a box with python3 but no base64 nor gzip
    only_python.mkdir(exist_ok=True)
    if not (only_python / "python3").exists():
        (only_python / "python3").symlink_to("/usr/bin/python3")
    world.configure(
        {
            big.ip: {"delay": 60},  # past its timeout
            eic_box.ip: {"env": {"PATH": str(only_python)}},  # a failing command
            x1.ip: {"managed": False},  # not managed: Undeliverable
            x2.ip: {"denied": True},  # outside the caller's IAM scope: AccessDenied
        }
    )
    try:
        code, envelope = natfleet(world, lab, "summary", "--via", "ssm", "--timeout", "8")
    finally:
        world.configure({})
    rows, errors = _by_box(envelope)
    assert code == 3 and sorted(rows) == sorted(SHARED), envelope["errors"]
    kinds = {name: e["kind"] for name, e in errors.items()}
    assert kinds == {
        "nfssm1": "timeout",
        "nfssm2": "agent",
        "nfssm-x1": "not_managed",
        "nfssm-x2": "aws_denied",
    }
    assert "Execution Timed Out" in errors["nfssm1"]["error"]
    assert "the agent failed on nfssm2" in errors["nfssm2"]["error"]
    assert "invalid literal for int()" in errors["nfssm2"]["error"]  # its stdin never came
    assert "AmazonSSMManagedInstanceCore" in errors["nfssm-x1"]["error"]
    assert "access denied for ssm:SendCommand" in errors["nfssm-x2"]["error"]


# --- EC2 Instance Connect ---------------------------------------------------------------------


def _eic_args(world, *more):
    return (
        "summary", *_ids(world, ("nfssm2",)), "-i", str(world.key_file), "--ssh-user", "root",
        "--known-hosts", str(world.known_hosts), *more,
    )  # fmt: skip


def test_eic_reads_a_box_without_a_key_of_its_own(world, lab):
    world.configure({}, key_seconds=2)
    try:
        code, envelope = natfleet(world, lab, *_eic_args(world, "--eic"))
        assert code == 0, envelope["errors"]
        rows, _ = _by_box(envelope)
        assert rows["nfssm2"][0]["summary"]["flows"] >= 3
        time.sleep(2.5)  # the pushed key expires on the box: plain SSH is refused
        code, envelope = natfleet(world, lab, *_eic_args(world))
        assert code == 1 and envelope["errors"][0]["kind"] == "auth"  # (its only box failed)
    finally:
        world.configure({}, key_seconds=60)


def test_eic_key_expired_before_login_is_a_clear_error(world, lab):
    world.configure({}, key_seconds=-1)  # expired by the time sshd asks: a slow connection
    try:
        code, envelope = natfleet(world, lab, *_eic_args(world, "--eic"))
    finally:
        world.configure({}, key_seconds=60)
    [error] = envelope["errors"]
    assert code == 1 and error["kind"] == "auth"
    assert "pushed with EC2 Instance Connect" in error["error"]
    assert "a pushed key lasts 60 s" in error["error"]


def test_eic_needs_a_public_key(world, lab, tmp_path):
    lone = tmp_path / "lone"
    lone.write_text("not a key\n")
    code, envelope = natfleet(
        world, lab, "summary", *_ids(world, ("nfssm2",)), "-i", str(lone), "--eic"
    )
    [error] = envelope["errors"]
    assert code == 1 and error["kind"] == "eic" and "lone.pub" in error["error"]


# --- auto -------------------------------------------------------------------------------------


def test_auto_picks_ssh_or_ssm_per_box(world, lab, monkeypatch):
    from natfleet.ssh import SshOptions

    for key, value in world.env().items():
        monkeypatch.setenv(key, value)
    sessions = api.sessions()
    devices = api.discover(sessions, instance_ids=_ids(world, (*SHARED, "nfssm1"))[1::2])
    targets, errors = api.instance_targets(devices)
    assert not errors
    executor = api.transport(
        SshOptions(ssh_config=lab.ssh_config, known_hosts=lab.known_hosts),
        via="auto",
        sessions=sessions,
        probe_timeout=1.0,
    )
    results = api.read_fleet(targets, api.summary_request(), executor)
    assert [type(r).__name__ for r in results] == ["HostResult"] * 4, results
    picks = {label.split(" ")[0]: via for label, (via, _why) in executor.chosen.items()}
    assert picks == {**dict.fromkeys(SHARED, "ssh"), "nfssm1": "ssm"}


def test_the_lab_boxes_sshd_config_with_instance_connect_is_valid(tmp_path):
    """What `lab up` writes for each box (natfleet.lab.sshd.start_sshd): its keys, the lab
    user's Match block, and Instance Connect's AuthorizedKeysCommand; `sshd -t` accepts it."""
    from natfleet.lab import eic, sshd
    from natfleet.lab.topology import make_box

    host_key = tmp_path / "host_key"
    sshd.keygen(host_key, "test host key")
    script = eic.write_script(Path("/run") / f"nfssm-t{os.getpid()}")
    try:
        text = sshd.sshd_config(
            make_box(1), host_key, tmp_path / "keys", ("root", tmp_path / "user_keys"),
            eic.sshd_lines(script, "198.19.255.11"),
        )  # fmt: skip
        config = tmp_path / "sshd_config"
        config.write_text(text)
        done = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True)
        assert done.returncode == 0, done.stderr
        assert text.index("AuthorizedKeysCommand ") < text.index("Match User")
    finally:
        script.unlink()
        script.parent.rmdir()
