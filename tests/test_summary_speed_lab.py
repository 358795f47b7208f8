"""The benchmark's table loader for real: ``conntrack -R`` into a namespace of our own
(``nfspd*``, no traffic, entries with short timeouts), then natfleet's summary of that live
table, and the fast path against parse_fields on the kernel's own text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from natfleet.errors import LabError
from natfleet.lab import bench
from natfleet.lab import topology as topo
from natfleet.lab.system import netns_argv, netns_list, run
from tests.test_summary_speed import assert_same, proc_line

NS = "nfspdtest"
INSIDE = ["198.18.80.10", "198.18.80.11", "198.18.80.12"]
NAT_IP = "198.18.80.1"


def _remove() -> None:
    if NS in netns_list(NS):
        run(["ip", "netns", "del", NS])  # its table goes with it
    topo.remove_netns_etc(NS)


@pytest.fixture
def namespace():
    _remove()
    topo.new_netns(NS)
    try:
        yield NS
    finally:
        _remove()


@pytest.mark.lab
def test_a_loaded_table_is_what_natfleet_summarises(namespace):
    assert bench.load_table(namespace, 200_000, INSIDE, NAT_IP, timeout=300) == 200_000
    assert bench.conntrack_count(namespace) == 200_000
    argv = [sys.executable, "-m", "natfleet", "summary", "--local", "--format", "json"]
    done = subprocess.run(netns_argv(namespace, argv), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)["rows"][0]
    summary = row["summary"]
    assert summary["flows"] == row["lines"] == 200_000 and row["malformed"]["count"] == 0
    assert summary["by_nat"]["snat"] == 200_000
    assert summary["by_state"] == {
        "tcp:ESTABLISHED": 120_000,
        "udp:REPLIED": 40_000,
        "udp:UNREPLIED": 40_000,
    }
    assert summary["tcp_snat_established"] == 120_000
    assert row["cpu"] > 0

    # the kernel prints what the tests' proc_line() says it prints (timeouts run down)
    text = run(netns_argv(namespace, ["cat", "/proc/net/nf_conntrack"]), timeout=60)
    kernel = text.splitlines()
    assert len(kernel) == 200_000

    def untimed(line: str) -> str:
        head, _, rest = line.partition(" src=")
        return " ".join(head.split()[:4]) + " " + " ".join(head.split()[5:]) + " src=" + rest

    made = {untimed(proc_line(e)) for e in bench.table_entries(200_000, INSIDE, NAT_IP, 300)}
    assert {untimed(line) for line in kernel} == made
    assert_same(kernel, sizes=[7000])  # the fast path equals parse_fields on the real thing


@pytest.mark.lab
def test_entries_already_there_are_an_error_not_a_silent_short_table(namespace):
    bench.load_table(namespace, 1000, INSIDE, NAT_IP, timeout=60)
    with pytest.raises(LabError, match="loaded 0 of 1000"):
        bench.load_table(namespace, 1000, INSIDE, NAT_IP, timeout=60)


def test_conntrack_max_is_raised_for_the_block_and_put_back(tmp_path):
    knob = tmp_path / "nf_conntrack_max"
    knob.write_text("262144\n")
    with bench.conntrack_max_at_least(1_100_000, str(knob)) as now:
        assert now == 1_100_000 and knob.read_text() == "1100000\n"
    assert knob.read_text() == "262144\n"
    with pytest.raises(RuntimeError), bench.conntrack_max_at_least(300_000, str(knob)):
        raise RuntimeError("a failed bench")
    assert knob.read_text() == "262144\n"
    with bench.conntrack_max_at_least(1000, str(knob)) as now:  # enough already: untouched
        assert now == 262144
    assert knob.read_text() == "262144\n"
