"""The lab: plans and messages (anywhere), then the real namespaces, tables and sshd (root).

The ``lab`` fixture (tests/conftest.py) is shared with other test files; the teardown test at
the bottom of this file brings the lab back up before it ends.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import natfleet.lab
from natfleet import cli
from natfleet.errors import LabError
from natfleet.lab import login, sshd, system, topology, traffic
from natfleet.lab.state import not_up
from tests.conftest import LAB_STARTED_HERE

CLOSING = {"TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT", "LAST_ACK"}


# --- without root -------------------------------------------------------------------------


def test_netns_argv():
    assert natfleet.lab.netns_argv("nflab-box1", ["conntrack", "-C"]) == [
        "ip",
        "netns",
        "exec",
        "nflab-box1",
        "conntrack",
        "-C",
    ]


def test_box_addresses():
    box = topology.make_box(2)
    assert (box.name, box.netns, box.inside_netns) == ("nflab-box2", "nflab-box2", "nflab-in2")
    assert (box.mgmt_ip, box.public_ip) == ("198.19.255.12", "198.51.100.12")
    assert (box.inside_ip, box.inside_host_ip) == ("198.18.2.1", "198.18.2.10")
    assert topology.inside_sources(box) == ["198.18.2.10", "198.18.2.11", "198.18.2.12"]


def test_nat_rules():
    assert topology.nat_rules(topology.make_box(1)) == (
        "*nat\n"
        "-A PREROUTING -i wan0 -d 198.51.100.11/32 -p tcp --dport 8080 "
        "-j DNAT --to-destination 198.18.1.10:80\n"
        "-A POSTROUTING -o wan0 -s 198.18.1.0/24 -j MASQUERADE\n"
        "COMMIT\n"
    )


def test_traffic_plans_are_bounded(tmp_path):
    plans = traffic.traffic_plans([topology.make_box(1)], tmp_path, 600)
    assert sorted(plans) == ["nflab-box1", "nflab-in1", "nflab-inet", "nflab-srv"]
    for plan in plans.values():
        assert plan["lifetime"] == 600
        counts = [
            item[-1]
            for key in ("tcp_hold", "tcp_close", "tcp_half", "udp", "icmp")
            for item in plan.get(key, [])
        ]
        assert all(0 < count <= 10 for count in counts)
    assert plans["nflab-inet"]["tcp_hold"] == [
        ["198.51.100.1", "198.51.100.11", 8080, 1],
        ["198.51.100.1", "198.18.1.10", 80, 1],
    ]


def test_ssh_files(tmp_path):
    box = topology.make_box(1)
    config = sshd.ssh_config([box], tmp_path / "id", tmp_path / "known_hosts")
    assert "Host nflab-box1 198.19.255.11\n    HostName 198.19.255.11\n" in config
    assert "    StrictHostKeyChecking yes\n" in config
    assert f"    UserKnownHostsFile {tmp_path / 'known_hosts'}\n" in config
    line = sshd.known_hosts_line(box, "ssh-ed25519 AAAAC3Nza host key")
    assert line == "198.19.255.11,nflab-box1 ssh-ed25519 AAAAC3Nza"
    server = sshd.sshd_config(box, tmp_path / "hk", tmp_path / "ak")
    assert "ListenAddress 198.19.255.11\n" in server
    assert "PasswordAuthentication no\n" in server


def test_env_without_and_with_aws():
    state = natfleet.lab.LabState("/s", [], "/s/ssh_config", "/s/known_hosts", "/s/id", {})
    assert state.env() == {
        "NATFLEET_SSH_CONFIG": "/s/ssh_config",
        "NATFLEET_KNOWN_HOSTS": "/s/known_hosts",
        "NATFLEET_LAB_DIR": "/s",
    }
    state.aws = {"endpoint_url": "http://127.0.0.1:5001", "region": "us-east-1", "pid": 1}
    env = state.env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5001"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"] == "testing"


def test_state_round_trip(tmp_path):
    box = topology.make_box(1)
    state = natfleet.lab.LabState(str(tmp_path), [box], "c", "k", "i", {"region": "us-east-1"})
    natfleet.lab.save_state(state)
    assert natfleet.lab.load_state(str(tmp_path)) == state


def test_load_state_when_not_up(tmp_path, monkeypatch):
    monkeypatch.setattr(system, "natfleet_command", lambda: "/opt/nf/.venv/bin/natfleet")
    with pytest.raises(LabError) as err:
        natfleet.lab.load_state(str(tmp_path))
    assert str(err.value) == not_up()
    assert not_up() == "the lab is not up: run 'sudo /opt/nf/.venv/bin/natfleet lab up'"


@pytest.mark.parametrize("action", ["up", "down"])
def test_not_root_says_what_to_run(monkeypatch, action):
    monkeypatch.setattr(system.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(system, "natfleet_command", lambda: "natfleet")
    with pytest.raises(LabError, match=rf"needs root .*: sudo natfleet lab {action}$"):
        getattr(natfleet.lab, action)()


def _fake_bin(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def test_natfleet_command_is_one_that_works_under_sudo(monkeypatch, tmp_path):
    venv = _fake_bin(tmp_path / "venv" / "bin", "python", "natfleet")
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setattr(system, "SUDO_PATH", str(_fake_bin(tmp_path / "usr-bin")))
    assert system.natfleet_command() == str(venv / "natfleet")  # sudo's PATH has none
    other = _fake_bin(tmp_path / "other", "natfleet")
    monkeypatch.setattr(system, "SUDO_PATH", f"{other}:{venv}")
    assert system.natfleet_command() == str(venv / "natfleet")  # sudo would find another one
    monkeypatch.setattr(system, "SUDO_PATH", f"{venv}:{other}")
    assert system.natfleet_command() == "natfleet"
    (venv / "natfleet").unlink()  # run from a source tree: no console script
    assert system.natfleet_command() == f"{venv / 'python'} -m natfleet"


def test_missing_tool_says_what_to_install(monkeypatch):
    monkeypatch.setattr(system.os, "geteuid", lambda: 0)
    monkeypatch.setattr(system, "TOOLS", ("no-such-tool-nflab",))
    with pytest.raises(LabError, match="'no-such-tool-nflab': apt-get install iptables conntrack"):
        natfleet.lab.down()


def test_cli_not_root(monkeypatch, capsys):
    monkeypatch.setattr(system.os, "geteuid", lambda: 1000)
    assert cli.main(["lab", "up", "--boxes", "1"]) == 1
    assert "the lab needs root" in capsys.readouterr().err


@pytest.mark.parametrize("action", [[], ["up"], ["down"], ["status"], ["env"]])
def test_cli_help_has_an_example(action, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["lab", *action, "--help"])
    assert done.value.code == 0
    assert "natfleet lab" in capsys.readouterr().out.split("example")[-1]


# --- the real lab (root) ----------------------------------------------------------------


def _entries(netns: str) -> list[dict]:
    """``conntrack -L -o extended`` rows as {proto, state, orig, reply, flags} dicts."""
    out = subprocess.run(
        natfleet.lab.netns_argv(netns, ["conntrack", "-L", "-o", "extended"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        tuples: list[dict] = [{}, {}]
        side = -1
        for field in fields[4:]:
            key, _, value = field.partition("=")
            if key == "src":
                side += 1
            if side in (0, 1) and key in ("src", "dst", "sport", "dport", "type"):
                tuples[side].setdefault(key, value)
        state = fields[5] if fields[2] == "tcp" else None
        rows.append(
            {
                "proto": fields[2],
                "state": state,
                "orig": tuples[0],
                "reply": tuples[1],
                "unreplied": "[UNREPLIED]" in fields,
            }
        )
    return rows


@pytest.mark.lab
@pytest.mark.parametrize("index", [0, 1, 2])
def test_box_table_has_every_kind_of_entry(lab, index):
    box = lab.boxes[index]
    lan = box.inside_ip.rsplit(".", 1)[0] + "."
    rows = _entries(box.netns)

    def snat(row):
        return row["orig"]["src"].startswith(lan) and row["reply"]["dst"] == box.public_ip

    assert any(snat(r) and r["state"] == "ESTABLISHED" for r in rows), rows
    assert any(snat(r) and r["state"] in CLOSING for r in rows), rows
    assert any(snat(r) and r["proto"] == "udp" and not r["unreplied"] for r in rows), rows
    assert any(snat(r) and r["proto"] == "udp" and r["unreplied"] for r in rows), rows
    assert any(snat(r) and r["proto"] == "icmp" for r in rows), rows
    assert len({r["orig"]["src"] for r in rows if snat(r)}) == 3  # top sources has several
    dnat = [r for r in rows if r["orig"]["dst"] == box.public_ip and r["orig"]["dport"] == "8080"]
    assert dnat and dnat[0]["reply"]["src"] == box.inside_host_ip
    assert dnat[0]["reply"]["sport"] == "80"
    assert any(  # routed: forwarded untouched, no address of the box
        r["orig"]["src"] == topology.INET_IP
        and r["orig"]["dst"] == box.inside_host_ip
        and r["reply"]["dst"] == topology.INET_IP
        for r in rows
    ), rows
    assert any(r["orig"]["dst"] == box.inside_ip and r["orig"]["dport"] == "9000" for r in rows)
    assert any(
        r["orig"]["dst"] == box.mgmt_ip
        and r["orig"]["dport"] == "22"
        and r["state"] == "ESTABLISHED"
        for r in rows
    ), rows  # the SSH session held open by the lab


@pytest.mark.lab
def test_netstat_nat_sees_the_dnat_forward(lab):
    box = lab.boxes[0]
    out = subprocess.run(
        natfleet.lab.netns_argv(box.netns, ["netstat-nat", "-n", "-D"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{box.inside_host_ip}:80" in out


@pytest.mark.lab
@pytest.mark.parametrize("index", [0, 1, 2])
def test_sshd_presents_the_known_host_key(lab, index, tmp_path):
    """Root logs in too (``root@``, the lab's key) and reads the table; the default login is
    the lab user (test_lab_e2e runs natfleet through its sudo rule)."""
    name = lab.boxes[index].name
    ok = subprocess.run(
        ["ssh", "-F", lab.ssh_config, "-o", "BatchMode=yes", f"root@{name}"]
        + ["id -un; cat /proc/net/nf_conntrack"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("root\n") and "src=" in ok.stdout
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    refused = subprocess.run(
        [
            "ssh",
            "-F",
            lab.ssh_config,
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={empty}",
            name,
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr


def _without_live_counters(state):
    """The state without the publisher's interface counters (it updates them every minute)."""
    return dataclasses.replace(state, aws={k: v for k, v in state.aws.items() if k != "counters"})


@pytest.mark.lab
def test_state_and_cli(lab, capsys):
    assert _without_live_counters(natfleet.lab.load_state()) == _without_live_counters(lab)
    assert [box.mgmt_ip for box in lab.boxes] == ["198.19.255.11", "198.19.255.12", "198.19.255.13"]
    assert Path(lab.key_file).stat().st_mode & 0o077 == 0
    assert cli.main(["lab", "env"]) == 0
    assert f"export NATFLEET_SSH_CONFIG={lab.ssh_config}" in capsys.readouterr().out.splitlines()
    assert cli.main(["lab", "status"]) == 0
    assert re.search(r"nflab-box3\s+198\.19\.255\.13\s+up\s+up", capsys.readouterr().out)


@pytest.mark.lab
def test_up_again_keeps_the_running_lab(lab):
    started = time.monotonic()
    again = natfleet.lab.up(boxes=3, log=lambda _message: None)
    assert time.monotonic() - started < 2
    assert _without_live_counters(again) == _without_live_counters(lab)


@pytest.mark.lab
def test_fill_udp(lab):
    box = lab.boxes[2]

    def count() -> int:
        argv = natfleet.lab.netns_argv(box.netns, ["conntrack", "-C"])
        return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    before = count()
    try:
        assert natfleet.lab.fill_udp(lab, box, 5000, seconds_max=20) == 5000
        assert count() - before >= 4900
    finally:
        argv = ["conntrack", "-D", "-p", "udp", "-d", topology.SINK_IP]
        subprocess.run(natfleet.lab.netns_argv(box.netns, argv), capture_output=True)
    with pytest.raises(LabError, match="nf_conntrack_max=.*global"):
        natfleet.lab.fill_udp(lab, box, 10**9)


# Keep this test last: it takes the shared lab down, checks, and brings it back up.
@pytest.mark.lab
def test_down_removes_everything_then_up_restores(lab):
    if not LAB_STARTED_HERE["value"]:
        pytest.skip("the lab was already up (by hand or another session): not taking it down")
    state_dir = lab.state_dir
    natfleet.lab.down(log=lambda _message: None)
    natfleet.lab.down(log=lambda _message: None)  # twice is fine
    try:
        assert not [ns for ns in system.netns_list("") if ns.startswith("nflab-")]
        assert not Path("/sys/class/net/nflab-mgmt").exists()
        assert not Path(state_dir).exists()
        assert not list(topology.NETNS_ETC.glob("nflab-*"))  # the lab's resolver files
        assert not login.SUDOERS.exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(login.USER)
        leftovers = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if state_dir in text and int(cmdline.parent.name) != os.getpid():
                leftovers.append(text)
        assert not leftovers
        with pytest.raises(LabError, match="not up"):
            natfleet.lab.load_state()
    finally:
        again = natfleet.lab.up(boxes=3, aws=bool(lab.aws), log=lambda _message: None)
        vars(lab).update(vars(again))  # the session fixture's object stays the one in use
    assert natfleet.lab.box_status(lab)[0]["sshd"]


def test_down_removes_only_a_state_folder_the_lab_made(tmp_path):
    from natfleet.lab import MARKER, remove_state_folder

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    said: list[str] = []
    assert remove_state_folder(precious, said.append) is False
    assert (precious / "notes.txt").read_text() == "mine"
    assert "the lab did not make it" in said[0]
    made = tmp_path / "lab"
    made.mkdir()
    (made / MARKER).touch()
    assert remove_state_folder(made, said.append) is True
    assert not made.exists()
