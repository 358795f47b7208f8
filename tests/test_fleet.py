"""natfleet.fleet: one result or error per target, in order, bounded in time; then the lab."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from natfleet import agent, fleet, remote
from natfleet.errors import TargetError
from natfleet.fleet import ReadOptions, run_fleet, run_one
from natfleet.models import HostError, HostResult, Target
from natfleet.remote import ExecResult
from natfleet.ssh import SshConnector, SshOptions
from tests.boxes import Script, ScriptedExecutor, answer, wire

REPO = Path(__file__).resolve().parent.parent
LINE = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.10 dst=203.0.113.5 sport=40000 "
    "dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] mark=0 zone=0 "
    "use=2\n"
)


def _target(name: str) -> Target:
    return Target(name=name, host=f"{name}.example")


SUMMARY = {"mode": "summary"}
OK = wire(answer("summary"))


def test_results_in_target_order_errors_kept():
    denied = {"agent": 2, "ok": False, "error": {"kind": "permission", "message": "be root"}}
    executor = ScriptedExecutor(
        {
            "slow": Script(OK, delay=0.3),
            "refused": Script(error=TargetError("connection refused", kind="connect")),
            "denied": Script(wire(denied), delay=0.05),
            "bug": Script(error=KeyError("oops")),
            "garbage": Script(b"y\n" * 10),
            "fast": OK,
        }
    )
    calls = []
    names = list(executor.scripts)
    results = run_fleet(
        [_target(n) for n in names],
        SUMMARY,
        executor,
        ReadOptions(timeout=5),
        progress=lambda *a: calls.append(a),
    )
    assert [r.target.name for r in results] == names
    kinds = [r.kind if isinstance(r, HostError) else "ok" for r in results]
    assert kinds == ["ok", "connect", "permission", "internal", "answer", "ok"]
    assert results[0].answer.summary.flows == 11 and results[0].bytes_received == len(OK)
    assert results[0].seconds >= 0.3
    assert results[2].message == "be root"
    assert "KeyError" in results[3].message and "--debug" in results[3].message
    assert "not JSON" in results[4].message
    assert calls[-1] == (6, 6, 4) and [c[0] for c in calls] == [0, 1, 2, 3, 4, 5, 6]


def test_parallel_limit_and_empty():
    executor = ScriptedExecutor({f"n{i}": Script(OK, delay=0.1) for i in range(8)})
    started = time.monotonic()
    options = ReadOptions(parallel=3)
    results = run_fleet([_target(f"n{i}") for i in range(8)], SUMMARY, executor, options)
    assert len(results) == 8 and executor.peak == 3
    assert all(isinstance(r, HostResult) for r in results)
    assert time.monotonic() - started < 0.8
    assert run_fleet([], SUMMARY, executor) == []


def test_the_deadline_is_what_the_timeout_says():
    """A box that answers slower than --timeout is a timeout at the timeout, not later."""
    executor = ScriptedExecutor({"slow": Script(OK, delay=3.0), "fine": OK})
    started = time.monotonic()
    results = run_fleet([_target("slow"), _target("fine")], SUMMARY, executor, ReadOptions(0.5))
    assert time.monotonic() - started < 1.0
    assert results[0].kind == "timeout" and "within 0.5 s" in results[0].message
    assert isinstance(results[1], HostResult)


def test_a_box_that_never_stops_talking_is_cut_at_the_cap():
    executor = ScriptedExecutor(
        {
            "yes": Script(b"y", forever=b"y" * 65536),  # one endless line
            "blank": Script(OK, forever=b"\n" * 65536),  # endless empty lines
            "fine": OK,
        }
    )
    started = time.monotonic()
    results = run_fleet([_target(n) for n in executor.scripts], SUMMARY, executor)
    assert time.monotonic() - started < 5
    assert results[0].kind == "answer" and "longer than 1,048,576 bytes" in results[0].message
    assert results[1].kind == "answer" and "larger than the cap of 4,194,304" in results[1].message
    assert isinstance(results[2], HostResult)


def test_a_stuck_target_is_given_up(monkeypatch):
    """A transport that ignores its deadline is still given up on, just after it."""
    monkeypatch.setattr(fleet, "GRACE_SECONDS", 0.1)

    class Stuck(ScriptedExecutor):
        def exec(self, target, *args, **kwargs):
            if target.name == "stuck":
                time.sleep(3)
            return super().exec(target, *args, **kwargs)

    executor = Stuck({"stuck": OK, "fine": OK})
    started = time.monotonic()
    results = run_fleet([_target("stuck"), _target("fine")], SUMMARY, executor, ReadOptions(0.3))
    assert time.monotonic() - started < 1.5
    assert results[0].kind == "timeout" and "gave no answer within 0.3 s" in results[0].message
    assert isinstance(results[1], HostResult)


def test_the_raw_fallback_parses_the_dump_here():
    dump = (
        b"@@natfleet file /proc/net/nf_conntrack\n" + LINE.encode()
        + b"@@natfleet file /proc/sys/kernel/hostname\nold-box\n"
    )  # fmt: skip

    class NoPython(ScriptedExecutor):
        def exec(self, target, command, stdin, on_stdout, deadline, *args, **kwargs):
            if command == remote.REMOTE_COMMAND:
                return ExecResult(127, b"sh: 1: python3: not found\n", 26, "root@old:22", "root")
            on_stdout(dump)
            return ExecResult(0, b"", len(dump), "root@old:22", "root")

    [result] = run_fleet([_target("old"), _target("old")][:1], {"mode": "list"}, NoPython({}))
    assert isinstance(result, HostResult), result
    assert result.answer.executor == "raw" and result.answer.facts.hostname == "old-box"
    assert [f.nat for f in result.answer.flows] == ["snat"]
    assert remote.RAW_WARNING in result.answer.warnings


def test_file_and_local_targets(tmp_path, monkeypatch):
    dump = tmp_path / "nf_conntrack.txt"
    dump.write_text(LINE)
    result = run_one(Target(name="dump", kind="file", path=str(dump)), {"mode": "list"})
    assert isinstance(result, HostResult) and result.answer.flows[0].nat == "snat"
    missing = run_one(Target(name="gone", kind="file", path=str(tmp_path / "gone")), SUMMARY)
    assert isinstance(missing, HostError) and missing.kind == "input"

    class NoTable(agent.DumpSources):  # a machine without conntrack
        def __init__(self, root="/"):
            super().__init__({"/proc/sys/kernel/hostname": "here\n"})
            self.root = "/nonexistent"

    monkeypatch.setattr(agent, "LocalSources", NoTable)
    local = run_one(Target(name="here", kind="local"), {"mode": "list"})
    assert isinstance(local, HostError) and local.kind == "no_table"
    odd = run_one(Target(name="x", kind="ssm"), SUMMARY)
    assert isinstance(odd, HostError) and "unknown target kind" in odd.message
    no_connector = run_one(_target("a"), SUMMARY)
    assert isinstance(no_connector, HostError) and "no SSH connector" in no_connector.message


@pytest.mark.lab
def test_lab_fleet_over_ssh_matches_each_box(lab, monkeypatch):
    """Every lab box read over SSH (the lab's ssh_config and known_hosts, from its env) gives
    the same rows as the agent run inside that box's namespace."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    request = {"mode": "list", "filters": {"nat": ["snat", "dnat", "snat+dnat"]}, "sort": "src"}
    targets = [Target(name=box.name, host=box.name) for box in lab.boxes]
    targets.append(Target(name="down", host=lab.boxes[0].mgmt_ip, user="root", port=2))
    results = run_fleet(targets, request, SshConnector(SshOptions()), ReadOptions(timeout=30))
    assert [r.target.name for r in results] == [t.name for t in targets]
    assert isinstance(results[-1], HostError) and results[-1].kind == "connect"
    for box, result in zip(lab.boxes, results):
        assert isinstance(result, HostResult), getattr(result, "message", "")
        assert result.answer.facts.hostname and result.answer.matched > 0
        local = subprocess.run(
            ["ip", "netns", "exec", box.netns, "/usr/bin/python3", "-m", "natfleet.agent"],
            input=json.dumps({**request, "mode": "summary"}),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
            check=True,
        )
        header = json.loads(local.stdout.splitlines()[0])
        assert tuple(header["addresses"]) == result.answer.facts.addresses
        assert box.public_ip in result.answer.facts.addresses


def test_a_stuck_box_neither_blocks_the_boxes_queued_behind_it_nor_the_exit():
    """One worker, the first box never answers: the second is still read, and the process
    exits at once although the stuck thread is still blocked."""
    import subprocess
    import sys
    import time

    script = (
        "import threading, time\n"
        "from natfleet import fleet\n"
        "from natfleet.models import Target, HostResult, HostError\n"
        "from tests.boxes import Script, ScriptedExecutor, answer, wire\n"
        "fleet.GRACE_SECONDS = 0.1\n"
        "class Box(ScriptedExecutor):\n"
        "    def exec(self, target, *args, **kwargs):\n"
        "        if target.name == 'stuck':\n"
        "            threading.Event().wait()\n"
        "        return super().exec(target, *args, **kwargs)\n"
        "targets = [Target(name='stuck', host='198.51.100.7'),\n"
        "           Target(name='ok', host='198.51.100.8')]\n"
        "box = Box({'ok': wire(answer('summary'))})\n"
        "options = fleet.ReadOptions(timeout=0.2, parallel=1)\n"
        "out = fleet.run_fleet(targets, {'mode': 'summary'}, box, options)\n"
        "assert isinstance(out[0], HostError) and out[0].kind == 'timeout', out\n"
        "assert isinstance(out[1], HostResult), out\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, cwd=str(REPO))
    assert time.monotonic() - started < 5


def test_ctrl_c_ends_a_fleet_run_within_a_second():
    """Boxes still busy: SIGINT (Ctrl-C) ends natfleet at once, exit 130, no traceback."""
    import signal
    import sys

    script = (
        "import sys\n"
        "from natfleet import api, cli\n"
        "from tests.boxes import Script, ScriptedExecutor\n"
        "slow = {h: Script(b'', delay=60) for h in ('198.51.100.7', '198.51.100.8')}\n"
        "api.ssh_executor = lambda options: ScriptedExecutor(slow)\n"
        "print('ready', flush=True)\n"
        "sys.exit(cli.main(['summary', '--host', '198.51.100.7', '--host', '198.51.100.8']))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(1.0)  # the fleet is running: both boxes are "busy"
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = child.communicate(timeout=10)
        assert time.monotonic() - sent < 1.0
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    assert err == "Interrupted.\n"
