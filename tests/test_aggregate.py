"""Merging boxes' answers: what a box sends is data, checked before it is printed."""

from __future__ import annotations

import copy

from natfleet import agent
from natfleet.aggregate import fleet_total, merge_flows, summary_record
from natfleet.fleet import run_one
from natfleet.models import HostError, HostResult, Target
from tests.conftest import DATA

ROOT = str(DATA / "root")


def answer(mode: str) -> dict:
    return agent.handle({"mode": mode}, agent.LocalSources(ROOT))


def test_rows_that_are_not_rows_are_counted_not_printed():
    good = answer("list")
    hostile = copy.deepcopy(good["rows"][0])
    hostile["orig"]["src"] = "\x1b[2J198.51.100.1"
    good["rows"] = good["rows"][:2] + [hostile, {"proto": "tcp"}]
    result = HostResult(Target(name="nat-a", host="198.51.100.7"), good)
    flows, targets = merge_flows([result])
    assert len(flows) == 2 and len(targets) == 2
    assert "2 row(s) in the box's answer were not valid rows" in good["warnings"][-1]


def test_fleet_sorting_is_numeric_across_boxes():
    a = HostResult(Target(name="a", host="198.51.100.7"), answer("list"))
    b = HostResult(Target(name="b", host="198.51.100.8"), answer("list"))
    flows, targets = merge_flows([a, b], sort="src")
    sources = [f.osrc for f in flows]
    assert sources.index("192.168.1.2") < sources.index("192.168.1.10")
    assert len(flows) == 2 * len(a.rows)
    assert {t["name"] for t in targets} == {"a", "b"}


def test_an_error_message_from_a_box_is_printable(monkeypatch):
    class Box:
        def run_agent(self, target, request):
            return {"ok": False, "error": {"kind": "table", "message": "no\x1b]0;pwn\x07 table"}}, 0

    result = run_one(Target(name="nat-a", host="198.51.100.7"), {"mode": "list"}, Box())
    assert isinstance(result, HostError)
    assert "\x1b" not in result.message and "\\x1b" in result.message


def test_total_sums_boxes_and_counts_failures():
    ok = HostResult(Target(name="a", host="198.51.100.7"), answer("summary"))
    failed = HostError(Target(name="b", host="198.51.100.8"), "refused", kind="connect")
    total = fleet_total([ok, ok, failed])
    assert total["flows"] == 22
    assert total["drops"] == "36/2/8"  # insert_failed/drop/early_drop summed over the boxes
    assert total["error"] == "1 failed"
    assert summary_record(failed)["error"] == "connect: refused"
