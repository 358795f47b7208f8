"""natfleet.ssm against in-process moto: batching by 50, the status of every invocation as
its own error, the retry of InvocationDoesNotExist, the fixed script; the lab's Run Command
runner (natfleet.lab.ssm) plays the instances: their commands run here, for real."""

from __future__ import annotations

import base64
import gzip
import socket
import subprocess
from pathlib import Path

import pytest

from natfleet import agent, aws, remote, ssm
from natfleet.errors import TargetError
from natfleet.fleet import ReadOptions, run_fleet
from natfleet.lab import ssm as lab_ssm
from natfleet.limits import Deadline
from natfleet.models import HostError, Target
from natfleet.ssh import SshConnector, SshOptions

REGION = "us-east-1"


def _instances(session, count: int, first: int = 11) -> list[tuple[str, str]]:
    """(instance id, private ip) of ``count`` instances in a 198.18.100.0/24 subnet."""
    ec2 = aws.client(session, "ec2")
    vpc = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="198.18.100.0/24")["Subnet"]["SubnetId"]
    out = []
    for n in range(count):
        ip = f"198.18.100.{first + n}"
        inst = ec2.run_instances(
            ImageId="ami-760aaa0f", MinCount=1, MaxCount=1, SubnetId=subnet, PrivateIpAddress=ip
        )["Instances"][0]
        out.append((inst["InstanceId"], ip))
    return out


def _targets(instances) -> list[Target]:
    return [
        Target(name=f"box{n}", host=ip, instance_id=i, region=REGION)
        for n, (i, ip) in enumerate(instances, 1)
    ]


@pytest.fixture
def runner(session, tmp_path):
    """The lab's Run Command runner inside the in-process moto (boxes run here, no netns)."""
    undo = lab_ssm.install(tmp_path)
    yield tmp_path
    undo()


def _raw(executor, target, deadline=20.0):
    """Run the raw-dump command (no python3 needed) through SSM; (ExecResult, stdout)."""
    out: list[bytes] = []
    result = executor.exec(target, agent.RAW_COMMAND, b"", out.append, Deadline(deadline))
    return result, b"".join(out)


# --- the script --------------------------------------------------------------------------


def test_script_is_a_fixed_template_with_the_payload_in_base64():
    one = ssm.build_script(remote.REMOTE_COMMAND, b"1\nx" + b'{"mode": "summary"}')
    two = ssm.build_script(remote.REMOTE_COMMAND, b"1\nx" + b'{"mode": "info"}')
    head1, payload1, tail1 = one.split("'", 2)
    head2, _payload2, tail2 = two.split("'", 2)
    assert (head1, tail1) == (head2, tail2)  # only the quoted payload differs
    assert set(payload1) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert remote.REMOTE_COMMAND in tail1 and "gzip -c | base64 -w0" in tail1
    with pytest.raises(TargetError) as info:
        ssm.build_script("rm -rf /", b"")
    assert info.value.kind == "internal"
    with pytest.raises(TargetError) as info:
        ssm.build_script(remote.REMOTE_COMMAND, b"x" * 50000)
    assert info.value.kind == "ssm_delivery" and "--via ssh" in str(info.value)


def test_script_runs_in_sh_and_keeps_the_exit_status(tmp_path):
    """The template round trip, for real in /bin/sh: stdin in, gzip+base64 out, exit code."""
    script = ssm.build_script(agent.RAW_COMMAND, b"")
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
    out: list[bytes] = []
    ssm.decode_answer([done.stdout], out.append, "here")
    assert done.returncode == 0 and agent.RAW_MARK.encode() in b"".join(out)
    failing = script.replace(agent.RAW_COMMAND, "sh -c 'cat; exit 7'")
    done = subprocess.run(["/bin/sh", "-c", failing], capture_output=True, text=True, timeout=30)
    assert done.returncode == 7


@pytest.mark.parametrize("mode", ["info", "summary", "list", "check"])
def test_each_modes_bundle_runs_the_agent_and_fits_ssm(mode):
    """The bundle of a mode (without the modules other modes use) runs the agent with the same
    constant command (on this machine's table), and every mode's script fits the limit."""
    stdin = remote.agent_stdin({"mode": mode})
    for each in (mode, "watch"):  # a watch runs for minutes: only its size is checked
        script = ssm.build_script(remote.REMOTE_COMMAND, remote.agent_stdin({"mode": each}))
        assert len(script) <= ssm.MAX_SCRIPT
    done = subprocess.run(
        ["sh", "-c", remote.REMOTE_COMMAND], input=stdin, capture_output=True, timeout=60
    )
    header = done.stdout.split(b"\n", 1)[0]
    assert b'"agent"' in header and b"ImportError" not in done.stderr, done.stderr[-300:]


@pytest.mark.parametrize(
    "text, why",
    [
        ("not base64 !", "characters outside base64"),
        (base64.b64encode(gzip.compress(b"x" * 1000))[:-8].decode(), "ends early"),
        (base64.b64encode(gzip.compress(b"ok") + b"junk").decode(), "after the compressed"),
        ("QUJD", "Error"),  # base64 of "ABC": not gzip
    ],
)
def test_output_that_is_not_an_encoded_answer_is_an_answer_error(text, why):
    with pytest.raises(TargetError) as info:
        ssm.decode_answer([text], lambda _chunk: None, "box")
    assert info.value.kind == "answer"
    assert why.lower() in str(info.value).lower()


def test_decoding_feeds_bounded_pieces_and_the_sink_can_stop_it():
    bomb = base64.b64encode(gzip.compress(b"\0" * (8 << 20))).decode()
    pieces = []

    def sink(chunk: bytes) -> None:
        pieces.append(len(chunk))
        if sum(pieces) > 1 << 20:
            raise TargetError("too big", kind="answer")

    with pytest.raises(TargetError, match="too big"):
        ssm.decode_answer([bomb[i : i + 1000] for i in range(0, len(bomb), 1000)], sink, "b")
    assert max(pieces) <= 1 << 16 and sum(pieces) < 2 << 20


# --- statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, details, kind",
    [
        ("Failed", "Undeliverable", "not_managed"),
        ("TimedOut", "DeliveryTimedOut", "ssm_delivery"),
        ("TimedOut", "Delivery Timed Out", "ssm_delivery"),
        ("TimedOut", "ExecutionTimedOut", "timeout"),
        ("TimedOut", "", "timeout"),
        ("Cancelled", "Cancelled", "ssm_cancelled"),
        ("Failed", "Terminated", "ssm_cancelled"),
        ("Failed", "InvalidPlatform", "not_managed"),
        ("Failed", "AccessDenied", "aws_denied"),
        ("Failed", "RateExceeded", "throttled"),
        ("Failed", "SomethingNew", "ssm_delivery"),
    ],
)
def test_every_final_status_is_its_own_error(status, details, kind):
    invocation = {"Status": status, "StatusDetails": details, "StandardErrorContent": "e\nlast"}
    with pytest.raises(TargetError) as info:
        ssm._final(invocation, "nat-a")
    assert info.value.kind == kind
    assert str(info.value).startswith("nat-a: ") and "last" in str(info.value)


@pytest.mark.parametrize(
    "status, details, final",
    [
        ("Pending", "Pending", False),
        ("InProgress", "InProgress", False),
        ("Delayed", "Delayed", False),
        ("Success", "Success", True),
        ("Failed", "Failed", True),
    ],
)
def test_waiting_and_answered_statuses(status, details, final):
    assert ssm._final({"Status": status, "StatusDetails": details}, "b") is final


@pytest.mark.parametrize(
    "last, throttled, kind, says",
    [
        ("Pending", False, "ssm_delivery", "still Pending"),
        ("Delayed", False, "ssm_delivery", "Delayed"),
        ("InProgress", False, "timeout", "still running"),
        ("", False, "ssm_delivery", "InvocationDoesNotExist"),
        ("InProgress", True, "throttled", "Rate Exceeded"),
    ],
)
def test_a_deadline_on_the_way_says_where_the_command_was(last, throttled, kind, says):
    error = ssm._still(last, "nat-a", 20, throttled)
    assert error.kind == kind and says in str(error)


# --- batches of 50 -----------------------------------------------------------------------


def test_boxes_share_send_command_by_fifty(session):
    """101 boxes at once: three SendCommand calls (50, 50, 1), every box its own row (moto's
    own Run Command runs nothing: each box answers nothing, an agent error)."""
    instances = _instances(session, 101, first=1)
    sizes: list[int] = []
    session.events.register(
        "provide-client-params.ssm.SendCommand",
        lambda params, **kw: sizes.append(len(params["InstanceIds"])),
    )
    executor = ssm.SsmExecutor(ssm.SsmOptions(gather_seconds=3.0), {None: session})
    results = run_fleet(
        _targets(instances), {"mode": "summary"}, executor, ReadOptions(timeout=30, parallel=101)
    )
    assert sorted(sizes) == [1, 50, 50]
    assert len(results) == 101 and all(isinstance(r, HostError) for r in results)
    assert {r.kind for r in results} == {"agent"}
    assert "no output" in results[0].message


def test_a_box_the_caller_may_not_touch_fails_alone(runner, session):
    """AccessDenied and InvalidInstanceId fail the whole SendCommand: natfleet then sends
    each instance alone, so only those boxes are error rows."""
    instances = _instances(session, 4)
    (_, ip1), (_, ip2), (_, ip3), _ = instances
    lab_ssm.write_runner(
        runner,
        {ip1: {}, ip2: {"denied": True}, ip3: {"registered": False}, instances[3][1]: {}},
        not_exist_seconds=0.2,
    )
    executor = ssm.SsmExecutor(ssm.SsmOptions(gather_seconds=1.0), {None: session})
    targets = _targets(instances)
    outcomes = []
    import threading

    def one(target):
        try:
            outcomes.append((target.name, _raw(executor, target)[0].status))
        except TargetError as exc:
            outcomes.append((target.name, exc.kind))

    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == [
        ("box1", 0),
        ("box2", "aws_denied"),
        ("box3", "not_managed"),
        ("box4", 0),
    ]


# --- InvocationDoesNotExist, statuses from the runner ---------------------------------------


def test_invocation_does_not_exist_is_retried_for_the_first_seconds(runner, session):
    ((instance, ip),) = _instances(session, 1)
    lab_ssm.write_runner(runner, {ip: {}}, not_exist_seconds=1.5)
    codes: list[str] = []
    session.events.register(
        "after-call.ssm.GetCommandInvocation",
        lambda parsed, **kw: codes.append(parsed.get("Error", {}).get("Code", "ok")),
    )
    executor = ssm.SsmExecutor(ssm.SsmOptions(gather_seconds=0), {None: session})
    result, out = _raw(executor, _targets([(instance, ip)])[0])
    assert codes[0] == "InvocationDoesNotExist" and codes[-1] == "ok"
    assert result.status == 0 and agent.RAW_MARK.encode() in out
    assert result.where == f"ssm:{instance}"


def test_invocation_missing_too_long_is_an_error(runner, session, monkeypatch):
    ((instance, ip),) = _instances(session, 1)
    lab_ssm.write_runner(runner, {ip: {}}, not_exist_seconds=30)
    monkeypatch.setattr(ssm, "NOT_EXIST_SECONDS", 0.5)
    executor = ssm.SsmExecutor(ssm.SsmOptions(gather_seconds=0), {None: session})
    with pytest.raises(TargetError) as info:
        _raw(executor, _targets([(instance, ip)])[0])
    assert info.value.kind == "ssm_delivery" and "InvocationDoesNotExist" in str(info.value)


@pytest.mark.parametrize(
    "box, deadline, kind, says",
    [
        ({"managed": False}, 20, "not_managed", "Undeliverable"),
        ({"delay": 30}, 4, "timeout", "Execution Timed Out"),
    ],
)
def test_runner_statuses_become_their_errors(runner, session, box, deadline, kind, says):
    ((instance, ip),) = _instances(session, 1)
    lab_ssm.write_runner(runner, {ip: box}, not_exist_seconds=0.2)
    executor = ssm.SsmExecutor(ssm.SsmOptions(gather_seconds=0), {None: session})
    with pytest.raises(TargetError) as info:
        _raw(executor, _targets([(instance, ip)])[0], deadline)
    assert info.value.kind == kind and says in str(info.value)


def test_a_failing_command_keeps_its_exit_code_and_stderr_tail(runner, session):
    """A box without the tools the script needs: Failed, the real exit code and stderr."""
    ((instance, ip),) = _instances(session, 1)
    lab_ssm.write_runner(runner, {ip: {"env": {"PATH": "/nowhere"}}}, not_exist_seconds=0.2)
    executor = ssm.SsmExecutor(ssm.SsmOptions(gather_seconds=0), {None: session})
    target = _targets([(instance, ip)])[0]
    result, out = _raw(executor, target)
    assert out == b"" and result.status not in (0, None)
    failure = remote.remote_failure(result, target)
    assert failure.kind == "agent" and "not found" in str(failure)


def test_no_instance_id_is_a_clear_error(session):
    executor = ssm.SsmExecutor(ssm.SsmOptions(), {None: session})
    with pytest.raises(TargetError) as info:
        _raw(executor, Target(name="nat-a", host="198.51.100.7"))
    assert info.value.kind == "not_managed" and "--via ssh" in str(info.value)


# --- auto ----------------------------------------------------------------------------------


def test_auto_picks_ssh_where_port_22_answers_and_ssm_elsewhere(tmp_path, session):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    open_port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host open\n  HostName 127.0.0.1\n  Port {open_port}\n"
        f"Host shut\n  HostName 127.0.0.1\n  Port {closed_port}\n"
        "Host proxied\n  ProxyCommand sh -c 'aws ssm start-session --target %h "
        "--document-name AWS-StartSSHSession --parameters portNumber=%p'\n"
    )
    auto = ssm.AutoExecutor(
        SshConnector(SshOptions(ssh_config=str(config))),
        ssm.SsmExecutor(ssm.SsmOptions(), {None: session}),
        probe_timeout=1.0,
    )
    try:
        picks = {
            name: auto.choose(Target(name=name, host=host, instance_id=iid))[0]
            for name, host, iid in [
                ("open", "open", "i-1"),
                ("shut", "shut", "i-2"),
                ("none", "", "i-3"),
                ("proxied", "proxied", "i-4"),
                ("host", "shut", None),
            ]
        }
    finally:
        listener.close()
    assert picks == {"open": "ssh", "shut": "ssm", "none": "ssm", "proxied": "ssh", "host": "ssh"}


def test_ssm_targets_keeps_instances_without_an_address(session):
    from natfleet.discovery import targets_and_errors
    from natfleet.models import Device

    devices = [
        Device("instance", "i-1", REGION, name="a", state="running"),
        Device("instance", "i-2", REGION, name="b", state="stopped", private_ip="10.0.0.2"),
        Device("instance", "i-3", REGION, name="c", state="running", private_ip="10.0.0.3"),
    ]
    found, errors = targets_and_errors(devices)
    more, kept = ssm.ssm_targets(errors, devices)
    assert [t.instance_id for t in found] == ["i-3"]
    assert [t.instance_id for t in more] == ["i-1"]
    assert [e.target.instance_id for e in kept] == ["i-2"]


def test_s3_key_layout():
    assert (
        ssm.s3_key("/p/q/", "cmd", "i-1")
        == "p/q/cmd/i-1/awsrunShellScript/0.awsrunShellScript/stdout"
    )
    assert ssm.SsmOptions(output_s3="bucket").s3_location() == ("bucket", "")
    assert Path(ssm.s3_key("", "c", "i")).parts[0] == "c"


# --- SSH through Session Manager (ssh_config ProxyCommand) -----------------------------------

DATA = Path(__file__).parent / "data" / "ssm"


def test_the_session_manager_ssh_config_becomes_a_proxy_command():
    """The README's ssh_config example, read by natfleet's ssh.py: %h and %p filled in."""
    connector = SshConnector(SshOptions(ssh_config=str(DATA / "ssh_config")))
    [hop] = connector._chain(Target(name="nat-a", host="i-0123456789abcdef0"))
    assert hop.user == "ec2-user" and hop.port == 22
    assert hop.proxy_command == (
        'sh -c "aws ssm start-session --target i-0123456789abcdef0 --document-name '
        "AWS-StartSSHSession --parameters 'portNumber=22'\""
    )


@pytest.mark.parametrize(
    "fake, says",
    [
        ("plugin", "Session Manager plugin is not installed on this machine"),
        (
            "not-managed",
            "Session Manager says the instance is not connected: it is not a managed instance",
        ),
    ],
)
def test_a_failing_session_manager_proxy_says_why(tmp_path, monkeypatch, fake, says):
    """The ProxyCommand ends at once (as `aws ssm start-session` does): the error row names
    the cause, and comes at once, not after the connect timeout."""
    config = tmp_path / "ssh_config"
    text = (DATA / "ssh_config").read_text().replace("aws ssm", f"{DATA / 'fake-aws'} ssm")
    config.write_text(text.replace("~/.ssh/nat", str(tmp_path / "none")))
    monkeypatch.setenv("NF_FAKE", fake)
    target = Target(name="nat-a", host="i-0123456789abcdef0", instance_id="i-0123456789abcdef0")
    connector = SshConnector(SshOptions(ssh_config=str(config), known_hosts=str(tmp_path / "kh")))
    [outcome] = run_fleet([target], {"mode": "summary"}, connector, ReadOptions(timeout=30))
    assert isinstance(outcome, HostError) and outcome.kind == "connect"
    assert says in outcome.message and "ProxyCommand for ec2-user@i-0123456789abcdef0:22" in (
        outcome.message
    )
    assert outcome.seconds < 5


def test_every_kind_ssm_and_eic_give_is_a_failure_kind():
    """Each error row kind of the SSM and Instance Connect transports is in FAILURE_KINDS."""
    import re

    from natfleet.models import FAILURE_KINDS

    root = Path(ssm.__file__).parent
    text = (root / "ssm.py").read_text() + (root / "eic.py").read_text()
    given = set(re.findall(r'kind="([a-z_]+)"', text))
    given |= {kind for kind, _what, _advice in ssm.STATUS_ADVICE.values()}
    assert {"not_managed", "ssm_output", "eic", "aws_denied"} <= given
    assert given - {"internal"} <= set(FAILURE_KINDS), given - set(FAILURE_KINDS)
