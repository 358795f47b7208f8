"""watch over SSH on the shared lab (read-only: natfleet only reads there): a box whose agent
is killed mid-watch is an error event while the other box keeps reporting, and the agent is
gone from a box soon after natfleet goes away. Uses a running lab; never builds one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab
NATFLEET = str(Path(sys.executable).with_name("natfleet"))


@pytest.fixture
def lab_env(lab):
    """The shared lab (the session's ``lab`` fixture builds it when it is down) and its env."""
    return lab, dict(os.environ, **lab.env(), NO_COLOR="1")


def _watchers(netns: str, since: float) -> list[int]:
    """This test's agents in ``netns``: parents of a ``conntrack -E`` started after ``since``
    (only watch --events runs conntrack -E; a plain read never does)."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    found = []
    for pid in (int(p) for p in out.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if not cmdline.startswith(b"conntrack\x00-E"):
            continue
        parent = int(stat[1])
        ticks = int(stat[19]) / os.sysconf("SC_CLK_TCK")
        boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
        parent_cmd = Path(f"/proc/{parent}/cmdline").read_bytes()
        if boot + ticks >= since - 1 and b"zlib.decompress" in parent_cmd:
            found.append(parent)
    return found


def _start(env, *hosts):
    argv = [NATFLEET, "watch", "-n", "--events", "--interval", "1", "--duration", "60",
            "--format", "jsonl"] + [f"--host={h}" for h in hosts]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    lines: list[dict] = []
    threading.Thread(
        target=lambda: lines.extend(json.loads(x) for x in proc.stdout), daemon=True
    ).start()
    return proc, lines


def _wait(test, seconds=20.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = test()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds:g} s")


def test_a_box_killed_mid_watch_is_an_event_and_the_other_keeps_reporting(lab_env):
    state, env = lab_env
    box1, box2 = state.boxes[0], state.boxes[1]
    since = time.time()
    proc, lines = _start(env, box1.name, box2.name)
    try:
        _wait(lambda: sum(1 for e in lines if e["event"] == "tick") >= 2)
        [agent] = _wait(lambda: _watchers(box2.netns, since))
        os.kill(agent, signal.SIGKILL)  # this test's own agent on box 2
        error = _wait(lambda: [e for e in lines if e["event"] == "error"])[0]
        assert error["target"]["name"] == box2.name
        assert error["kind"] in ("agent", "connect")
        after = len(lines)
        _wait(lambda: [e for e in lines[after:] if e["event"] == "tick"
                       and e["target"]["name"] == box1.name])  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode in (3, 130)


def test_the_agent_leaves_the_box_when_natfleet_goes_away(lab_env):
    state, env = lab_env
    box = state.boxes[0]
    since = time.time()
    proc, lines = _start(env, box.name)
    _wait(lambda: [e for e in lines if e["event"] == "tick"])
    [agent] = _wait(lambda: _watchers(box.netns, since))
    proc.kill()  # no goodbye: the SSH connection just drops
    proc.wait(5)
    end = time.monotonic() + 5
    while Path(f"/proc/{agent}").exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert not Path(f"/proc/{agent}").exists(), "the agent still runs on the box"
    assert _watchers(box.netns, since) == []  # and its conntrack -E with it
