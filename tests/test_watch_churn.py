"""natfleet.lab.churn in a namespace of its own (nfwatc, no addresses, no traffic): each
round loads its entries into that namespace's table and no other."""

from __future__ import annotations

import os

import pytest

from natfleet.errors import LabError
from natfleet.lab.bench import conntrack_count
from natfleet.lab.churn import churn
from natfleet.lab.system import run
from natfleet.lab.topology import new_netns, remove_netns_etc

pytestmark = pytest.mark.lab
NS = "nfwatc"


@pytest.fixture()
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    new_netns(NS)
    try:
        yield NS
    finally:
        run(["ip", "netns", "del", NS])
        remove_netns_etc(NS)


def test_each_round_loads_its_entries_and_stops_after_its_rounds(netns):
    before = conntrack_count("nflab-box1") if os.path.exists("/run/netns/nflab-box1") else None
    loaded = churn(netns, 300, rounds=3, period=0.1, inside=["198.18.90.10"],
                   nat_ip="198.18.90.65", start=1000, timeout=60)  # fmt: skip
    assert loaded == 900 and conntrack_count(netns) == 900
    if before is not None:  # the shared lab's table is not this one
        assert abs(conntrack_count("nflab-box1") - before) < 900


def test_churn_refuses_unbounded_work():
    with pytest.raises(LabError):
        churn("nfwatc", 300, rounds=0, period=1, inside=["198.18.90.10"], nat_ip="x", start=0)
    with pytest.raises(LabError, match="too few"):
        churn("nfwatc", 20000, rounds=1, period=1, inside=["a"], nat_ip="x", start=310000)
