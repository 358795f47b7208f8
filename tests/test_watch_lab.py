"""watch on real NAT, in namespaces of its own (nfwat-*, 198.18.90.0/24), with real TCP whose
timing the test drives: SYN held back, then answered, then closed from both ends.

    nfwat-in  eth0 198.18.90.10/26 --veth-- lan0 198.18.90.1/26   nfwat-box
    nfwat-box wan0 198.18.90.65/26 (MASQUERADE) --veth-- eth0 198.18.90.70/26  nfwat-out

Short conntrack timeouts are set in nfwat-box only (they are per namespace).
"""

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

from natfleet.lab.system import kill_netns_processes, netns_list, run, sysctl_in
from natfleet.lab.topology import new_netns, remove_netns_etc

pytestmark = pytest.mark.lab
BOX, INSIDE, OUTSIDE = "nfwat-box", "nfwat-in", "nfwat-out"
CLIENT_IP, SERVER_IP, NAT_IP, PORT = "198.18.90.10", "198.18.90.70", "198.18.90.65", 8000
NATFLEET = str(Path(sys.executable).with_name("natfleet"))
SERVER = f"""
import signal, socket, sys, time
signal.alarm(60)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{SERVER_IP}", {PORT})); s.listen(8); print("listening", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(4096):
        pass
    time.sleep(float(sys.argv[1]))  # half-closed for a while: FIN_WAIT/CLOSE_WAIT on the box
    c.close()
"""
CLIENT = f"""
import signal, socket, sys
signal.alarm(60)
s = None
for line in sys.stdin:
    word = line.strip()
    if word == "connect":
        s = socket.create_connection(("{SERVER_IP}", {PORT}), timeout=20)
        print("connected", flush=True)
    elif word == "send":
        s.sendall(b"hello")
    elif word == "close":
        s.shutdown(socket.SHUT_WR); s.recv(1); s.close(); print("closed", flush=True)
    elif word == "refused":
        try:
            socket.create_connection(("{SERVER_IP}", {PORT + 1}), timeout=5)
        except OSError:
            print("refused", flush=True)
"""


def _ns(name, *argv):
    return ["ip", "netns", "exec", name, *argv]


@pytest.fixture(scope="module")
def natlab():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    _down()
    try:
        for name in (BOX, INSIDE, OUTSIDE):
            new_netns(name)
        run(["ip", "-n", BOX, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
             "netns", INSIDE])  # fmt: skip
        run(["ip", "-n", BOX, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0",
             "netns", OUTSIDE])  # fmt: skip
        for ns, dev, cidr in ((BOX, "lan0", "198.18.90.1/26"), (BOX, "wan0", f"{NAT_IP}/26"),
                              (INSIDE, "eth0", f"{CLIENT_IP}/26"),
                              (OUTSIDE, "eth0", f"{SERVER_IP}/26")):  # fmt: skip
            run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", INSIDE, "route", "add", "198.18.90.64/26", "via", "198.18.90.1"])
        rules = "*nat\n-A POSTROUTING -o wan0 -s 198.18.90.0/26 -j MASQUERADE\nCOMMIT\n"
        run(_ns(BOX, "iptables-restore"), input=rules)
        timeouts = {
            f"net.netfilter.nf_conntrack_tcp_timeout_{k}": 2
            for k in ("time_wait", "fin_wait", "close_wait", "last_ack", "close")
        }
        sysctl_in(BOX, {"net.ipv4.ip_forward": 1, **timeouts})
        server = subprocess.Popen(_ns(OUTSIDE, sys.executable, "-c", SERVER, "1.5"),
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert server.stdout.readline().strip() == "listening"
        yield server
        server.kill()
        server.wait(5)
    finally:
        _down()


def _down():
    for name in netns_list("nfwat-"):
        kill_netns_processes(name)
        run(["ip", "netns", "del", name])
    remove_netns_etc("nfwat-")


class Watch:
    """``natfleet watch --local --format jsonl`` inside the box; its lines collected."""

    def __init__(self, *flags: str) -> None:
        argv = _ns(BOX, NATFLEET, "watch", "--local", "-n", "-p", "tcp", "--format", "jsonl",
                   "--duration", "40", *flags)  # fmt: skip
        env = dict(os.environ, NO_COLOR="1")
        self.events = "--events" in flags
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        self.lines: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda e: e["event"] == "tick")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, test, seconds: float = 15.0, nudge=None) -> dict:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for event in list(self.lines):
                if test(event):
                    return event
            if nudge is not None:
                nudge()
            time.sleep(0.05 if nudge is None else 0.5)
        raise AssertionError(f"not seen within {seconds} s; saw {self.lines[-5:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def _mine(sport):
    return lambda e: e.get("orig", {}).get("dport") == PORT and e["orig"]["sport"] == sport


def _walk_a_connection(watch: Watch) -> list[dict]:
    client = subprocess.Popen(_ns(INSIDE, sys.executable, "-c", CLIENT), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    drop = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(PORT), "--syn", "-j", "DROP"]
    run(_ns(OUTSIDE, *drop))
    try:
        client.stdin.write("connect\n")
        client.stdin.flush()
        new = watch.wait_for(lambda e: e["event"] in ("new", "present")
                             and e.get("orig", {}).get("dport") == PORT)  # fmt: skip
        assert new["status"] == "SYN_SENT"
        time.sleep(1.2)
    finally:
        run(_ns(OUTSIDE, "iptables", "-D", *drop[2:]))
    assert client.stdout.readline().strip() == "connected"  # the retransmitted SYN got through
    mine = _mine(new["orig"]["sport"])
    watch.wait_for(lambda e: mine(e) and e["event"] == "update" and e["new"] == "ESTABLISHED")
    client.stdin.write("send\nclose\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "closed"
    # The kernel reaps an expired entry lazily (its GC, up to about a minute); /proc hides it
    # at once, and a dump (conntrack -L) reaps it, which is what the DESTROY event follows.
    reap = (lambda: run(_ns(BOX, "conntrack", "-L"))) if watch.events else None
    watch.wait_for(lambda e: mine(e) and e["event"] == "destroy", nudge=reap)
    client.stdin.close()
    client.wait(10)
    return [e for e in watch.lines if mine(e)]


@pytest.mark.parametrize("mode", [[], ["--events"]], ids=["interval", "events"])
def test_a_tcp_connection_walks_its_states(natlab, mode):
    watch = Watch("--interval", "0.5", *mode)
    try:
        events = _walk_a_connection(watch)
    finally:
        watch.stop()
    updates = [(e["old"], e["new"]) for e in events if e["event"] == "update"]
    states = [events[0]["status"]] + [new for _old, new in updates]
    assert states[0] == "SYN_SENT" and "ESTABLISHED" in states and "TIME_WAIT" in states, states
    closing = [s for s in states if s in ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK")]
    assert closing and states.index("ESTABLISHED") < states.index(closing[0]), states
    assert states.index(closing[0]) < states.index("TIME_WAIT"), states
    if mode:  # the kernel's own events: every step, in order
        assert states[:3] == ["SYN_SENT", "SYN_RECV", "ESTABLISHED"], states
    for (old, _), (_, before) in zip(updates[1:], updates):
        assert old == before  # each update's old state is the previous one's new state
    assert all(e["nat_ip"] == NAT_IP and e["nat"] == "snat" for e in events)
    assert events[-1]["event"] == "destroy"
    start = next(e for e in watch.lines if e["event"] == "start")
    assert start["mode"] == ("events" if mode else "interval")


def test_a_flow_shorter_than_an_interval_is_seen_in_event_mode(natlab):
    watch = Watch("--interval", "5", "--events")
    client = subprocess.Popen(_ns(INSIDE, sys.executable, "-c", CLIENT), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        client.stdin.write("refused\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "refused"  # SYN, RST: gone in 2 s
        refused = lambda e: e.get("orig", {}).get("dport") == PORT + 1  # noqa: E731
        watch.wait_for(lambda e: refused(e) and e["event"] == "new")
        watch.wait_for(lambda e: refused(e) and e["event"] == "destroy", 10)
    finally:
        client.stdin.close()
        client.wait(10)
        watch.stop()


def _agents() -> list[int]:
    pids = [int(p) for p in run(["ip", "netns", "pids", BOX]).split()]
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"zlib.decompress" in cmdline or b"conntrack\x00-E" in cmdline:
            found.append(pid)
    return found


@pytest.mark.parametrize("mode", [[], ["--events"]], ids=["interval", "events"])
def test_the_agent_is_gone_soon_after_the_laptop_goes_away(natlab, mode):
    watch = Watch("--interval", "1", *mode)
    assert _agents(), "the agent (and conntrack -E) run in the box while watched"
    watch.proc.kill()  # the laptop vanishes: no goodbye
    watch.proc.wait(5)
    end = time.monotonic() + 5
    while _agents() and time.monotonic() < end:
        time.sleep(0.1)
    assert _agents() == []


def _snapshot(tmp_path, name: str) -> str:
    path = str(tmp_path / name)
    run(_ns(BOX, NATFLEET, "snapshot", "--local", "-o", path))
    return path


def _diff(a: str, b: str) -> dict:
    out = run([NATFLEET, "diff", a, b, "--format", "json"])
    [box] = json.loads(out)["rows"]
    return box


def test_diff_of_two_snapshots_lists_exactly_the_flows_added_and_removed(natlab, tmp_path):
    client = subprocess.Popen(_ns(INSIDE, sys.executable, "-c", CLIENT), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(4)  # earlier tests' flows are gone (2 s timeouts)
        a = _snapshot(tmp_path, "a.snap.gz")
        client.stdin.write("connect\nsend\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "connected"
        b = _snapshot(tmp_path, "b.snap.gz")
        added = _diff(a, b)
        assert [x["flow"]["orig"]["dport"] for x in added["new"]] == [PORT]
        assert added["new"][0]["flow"]["reply"]["dst"] == NAT_IP
        assert added["gone"] == [] and added["changed"] == []
        client.stdin.write("close\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "closed"
        time.sleep(4)  # TIME_WAIT (2 s here) has passed
        c = _snapshot(tmp_path, "c.snap.gz")
        removed = _diff(b, c)
        assert removed["new"] == [] and removed["changed"] == []
        assert [x["flow"]["orig"] for x in removed["gone"]] == [added["new"][0]["flow"]["orig"]]
    finally:
        client.stdin.close()
        client.wait(10)
