"""Compact answers over real SSH on the shared lab: the same flows as ``conntrack -L`` in the
box and as the JSON rows of wire format 2, in fewer bytes; and the streamed fleet listing of
the CLI holds every stable flow of every box."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest

from natfleet import agent, api
from natfleet.cli import main
from natfleet.fleet import ReadOptions, run_fleet
from natfleet.models import HostResult, Target
from natfleet.ssh import SshConnector, SshOptions

pytestmark = pytest.mark.lab
ALL_NAT = list(agent.NAT_KINDS)


@pytest.fixture
def lab_env(lab, monkeypatch):
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COLUMNS", raising=False)
    return lab


def _key(row: dict) -> tuple:
    o, r = row["orig"], row["reply"]
    return (row["proto"], o["src"], o.get("sport"), o["dst"], o.get("dport"), r["src"],
            r["dst"], r.get("sport"), r.get("dport"))  # fmt: skip


def _conntrack(netns: str, tmp_path, nat: list = ALL_NAT) -> Counter:
    """The box's table as ``conntrack -L -o extended`` prints it, parsed by the agent
    (``nat``: the NAT kinds kept; only translated flows are told apart without the box's
    own addresses)."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "conntrack", "-L", "-o", "extended"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    path = tmp_path / f"{netns}.txt"
    path.write_text(done.stdout)
    request = {"mode": "list", "filters": {"nat": nat}}
    rows = agent.handle(request, agent.DumpSources(table_file=str(path)))["rows"]
    return Counter(_key(r) for r in rows)


def _read(lab, request: dict) -> list:
    targets = [Target(name=box.name, host=box.mgmt_ip) for box in lab.boxes]
    results = run_fleet(targets, request, SshConnector(SshOptions()), ReadOptions(timeout=30))
    assert all(isinstance(r, HostResult) for r in results), results
    return results


def _rows(result: HostResult) -> Counter:
    return Counter(_key(f.to_json()) for f in result.answer.flows)


def test_compact_answer_has_conntracks_flows_and_the_old_formats(lab_env, tmp_path):
    request = api.list_request(nat=ALL_NAT)
    ct1 = {box.name: _conntrack(box.netns, tmp_path) for box in lab_env.boxes}
    packed = _read(lab_env, request)  # compact: the default over SSH
    ct2 = {box.name: _conntrack(box.netns, tmp_path) for box in lab_env.boxes}
    plain = _read(lab_env, {**request, "encoding": "json"})
    ct3 = {box.name: _conntrack(box.netns, tmp_path) for box in lab_env.boxes}
    for box, compact, old in zip(lab_env.boxes, packed, plain):
        name = box.name
        assert compact.answer.flows.__class__.__name__ == "WireRows"
        assert old.answer.flows.__class__.__name__ == "list"
        got, was = _rows(compact), _rows(old)
        stable = ct1[name] & ct2[name]
        assert stable, f"no flows on {name}"
        assert not stable - got, f"{name}: conntrack's flows missing from the compact answer"
        assert not got - (ct1[name] | ct2[name]), f"{name}: flows conntrack never showed"
        assert not (ct2[name] & ct3[name]) - was, f"{name}: flows missing from the old format"
        both = ct1[name] & ct2[name] & ct3[name]
        same = {k: f.to_json() for f in compact.answer.flows if (k := _key(f.to_json())) in both}
        old_rows = {k: f.to_json() for f in old.answer.flows if (k := _key(f.to_json())) in both}
        for key in same.keys() & old_rows.keys():
            mine, theirs = dict(same[key]), dict(old_rows[key])
            mine.pop("timeout", None), theirs.pop("timeout", None)
            assert mine == theirs
        assert compact.bytes_received < old.bytes_received


def test_streamed_cli_listing_holds_every_stable_flow(lab_env, capsys, tmp_path):
    """``natfleet conns -n --format jsonl`` (AWS discovery through the moto server, the
    agent over SSH, the k-way merge) against conntrack -L on each box, read before and
    after; the rows come in the fleet-wide order."""
    translated = ["snat", "dnat", "snat+dnat"]
    before = {box.name: _conntrack(box.netns, tmp_path, translated) for box in lab_env.boxes}
    assert main(["conns", "-n", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    after = {box.name: _conntrack(box.netns, tmp_path, translated) for box in lab_env.boxes}
    for box in lab_env.boxes:
        fleet = Counter(_key(r) for r in rows if r["target"]["name"] == box.name)
        stable = before[box.name] & after[box.name]
        assert stable and not stable - fleet, box.name
        assert not fleet - (before[box.name] | after[box.name]), box.name
    flows = [agent.Flow.from_json({k: v for k, v in r.items() if k not in ("status", "target")})
             for r in rows]  # fmt: skip
    keys = [agent.sort_key("src")(f) for f in flows]
    assert keys == sorted(keys)
