"""natfleet.fleet: one result or error per target, in order, bounded in time; then the lab."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from natfleet import agent, fleet
from natfleet.errors import TargetError
from natfleet.fleet import run_fleet, run_one, tty_progress
from natfleet.models import HostError, HostResult, Target
from natfleet.ssh import SshConnector, SshOptions

REPO = Path(__file__).resolve().parent.parent
LINE = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.10 dst=203.0.113.5 sport=40000 "
    "dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] mark=0 zone=0 "
    "use=2\n"
)


class FakeConnector:
    """Answers by target name: a delay, then an answer dict or an exception."""

    def __init__(self, plan: dict, max_seconds: float = 5.0) -> None:
        self.plan = plan
        self.max_seconds = max_seconds
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def run_agent(self, target, request):
        delay, outcome = self.plan[target.name]
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(delay)
        finally:
            with self.lock:
                self.active -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome, 123


def _target(name: str) -> Target:
    return Target(name=name, host=f"{name}.example")


def _error(kind: str, message: str) -> TargetError:
    exc = TargetError(message)
    exc.kind = kind
    return exc


def test_results_in_target_order_errors_kept():
    ok = {"ok": True, "rows": [{"proto": "tcp"}]}
    plan = {
        "slow": (0.3, ok),
        "refused": (0.0, _error("connect", "connection refused by root@refused:22")),
        "denied": (0.05, {"ok": False, "error": {"kind": "permission", "message": "be root"}}),
        "bug": (0.0, KeyError("oops")),
        "fast": (0.0, ok),
    }
    calls = []
    results = run_fleet(
        [_target(n) for n in plan],
        {"mode": "list"},
        FakeConnector(plan),
        progress=lambda *a: calls.append(a),
    )
    assert [r.target.name for r in results] == list(plan)
    assert [type(r) for r in results] == [HostResult, HostError, HostError, HostError, HostResult]
    assert results[0].rows == [{"proto": "tcp"}] and results[0].bytes_received == 123
    assert results[0].seconds >= 0.3
    assert (results[1].kind, results[1].message) == (
        "connect",
        "connection refused by root@refused:22",
    )
    assert (results[2].kind, results[2].message) == ("permission", "be root")
    assert results[3].kind == "error" and "KeyError" in results[3].message
    assert calls[-1] == (5, 5, 3) and [c[0] for c in calls] == [1, 2, 3, 4, 5]


def test_parallel_limit_and_empty():
    plan = {f"n{i}": (0.1, {"ok": True}) for i in range(8)}
    connector = FakeConnector(plan)
    started = time.monotonic()
    results = run_fleet([_target(n) for n in plan], {}, connector, parallel=3)
    assert len(results) == 8 and connector.peak == 3
    assert time.monotonic() - started < 0.8
    assert run_fleet([], {}, connector) == []


def test_a_stuck_target_is_given_up(monkeypatch):
    monkeypatch.setattr(fleet, "GRACE_SECONDS", 0.1)
    plan = {"stuck": (3.0, {"ok": True}), "fine": (0.0, {"ok": True})}
    started = time.monotonic()
    results = run_fleet([_target(n) for n in plan], {}, FakeConnector(plan, max_seconds=0.3))
    assert time.monotonic() - started < 1.5
    assert results[0].kind == "timeout" and "gave no answer within 0.3 s" in results[0].message
    assert isinstance(results[1], HostResult)


def test_file_and_local_targets(tmp_path, monkeypatch):
    dump = tmp_path / "nf_conntrack.txt"
    dump.write_text(LINE)
    result = run_one(Target(name="dump", kind="file", path=str(dump)), {"mode": "list"})
    assert isinstance(result, HostResult) and result.rows[0]["nat"] == "snat"
    missing = run_one(Target(name="gone", kind="file", path=str(tmp_path / "gone")), {})
    assert isinstance(missing, HostError) and missing.kind == "input"

    class NoTable(agent.DumpSources):  # a machine without conntrack
        def __init__(self, root="/"):
            super().__init__({"/proc/sys/kernel/hostname": "here\n"})
            self.root = "/nonexistent"

    monkeypatch.setattr(agent, "LocalSources", NoTable)
    local = run_one(Target(name="here", kind="local"), {"mode": "list"})
    assert isinstance(local, HostError) and local.kind == "no_table"
    odd = run_one(Target(name="x", kind="ssm"), {})
    assert isinstance(odd, HostError) and "unknown target kind" in odd.message
    no_connector = run_one(_target("a"), {})
    assert isinstance(no_connector, HostError) and "no SSH connector" in no_connector.message


def test_tty_progress():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert tty_progress(io.StringIO()) is None
    stream = Tty()
    show = tty_progress(stream)
    show(3, 20, 1)
    show(20, 20, 0)
    assert stream.getvalue() == (
        "\r\x1b[Knatfleet: 3/20 boxes answered, 1 failed\r\x1b[Knatfleet: 20/20 boxes answered\n"
    )


@pytest.mark.lab
def test_lab_fleet_over_ssh_matches_each_box(lab, monkeypatch):
    """Every lab box read over SSH (the lab's ssh_config and known_hosts, from its env) gives
    the same rows as the agent run inside that box's namespace."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    request = {"mode": "list", "filters": {"nat": ["snat", "dnat", "snat+dnat"]}, "sort": "src"}
    targets = [Target(name=box.name, host=box.name) for box in lab.boxes]
    targets.append(Target(name="down", host=lab.boxes[0].mgmt_ip, user="root", port=2))
    results = run_fleet(targets, request, SshConnector(SshOptions(command_timeout=30)))
    assert [r.target.name for r in results] == [t.name for t in targets]
    assert isinstance(results[-1], HostError) and results[-1].kind == "connect"
    for box, result in zip(lab.boxes, results):
        assert isinstance(result, HostResult), getattr(result, "message", "")
        assert result.answer["hostname"] and result.answer["matched"] > 0
        local = subprocess.run(
            ["ip", "netns", "exec", box.netns, "/usr/bin/python3", "-m", "natfleet.agent"],
            input=json.dumps({**request, "mode": "summary"}),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
            check=True,
        )
        assert json.loads(local.stdout)["addresses"] == result.answer["addresses"]
        assert box.public_ip in result.answer["addresses"]


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
        "fleet.GRACE_SECONDS = 0.1\n"
        "class Box:\n"
        "    max_seconds = 0.2\n"
        "    def run_agent(self, target, request):\n"
        "        if target.name == 'stuck':\n"
        "            threading.Event().wait()\n"
        "        return {'ok': True, 'rows': []}, 0\n"
        "targets = [Target(name='stuck', host='198.51.100.7'),\n"
        "           Target(name='ok', host='198.51.100.8')]\n"
        "out = fleet.run_fleet(targets, {'mode': 'list'}, Box(), parallel=1)\n"
        "assert isinstance(out[0], HostError) and out[0].kind == 'timeout', out\n"
        "assert isinstance(out[1], HostResult), out\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert time.monotonic() - started < 5
