"""Merging boxes' checked answers: fleet-wide order, totals, failures kept."""

from __future__ import annotations

from natfleet.aggregate import fleet_total, merge_flows, summary_json, summary_record
from natfleet.answer import check_answer
from natfleet.models import HostError, HostResult, Target
from tests.boxes import answer


def result(name: str, mode: str, **request) -> HostResult:
    checked = check_answer(name, {"mode": mode, **request}, answer(mode, **request))
    return HostResult(Target(name=name, host="198.51.100.7"), checked)


def test_fleet_sorting_is_numeric_across_boxes_ties_in_box_order():
    a, b = result("a", "list"), result("b", "list")
    merged = merge_flows([a, b], sort="src")
    sources = [f.osrc for f in merged.flows]
    assert sources.index("192.168.1.2") < sources.index("192.168.1.10")
    assert len(merged.flows) == 2 * len(a.answer.flows)
    pairs = list(zip(sources, [t["name"] for t in merged.targets]))
    first_b = {s: pairs.index((s, "b")) for s, _ in pairs}
    assert all(pairs.index((s, "a")) < first_b[s] for s, _ in pairs)
    assert merged.head(3).flows == merged.flows[:3] and len(merged.head(3).names) == 3


def test_each_row_carries_its_own_boxs_names():
    a = result("a", "list")
    a.answer.names = {a.answer.flows[0].odst: "a-name.example"}
    b = result("b", "list")
    merged = merge_flows([a, b])
    for where, names in zip(merged.targets, merged.names):
        assert names is (a.answer.names if where["name"] == "a" else b.answer.names)


def test_total_sums_boxes_and_counts_failures():
    ok = result("a", "summary")
    failed = HostError(Target(name="b", host="198.51.100.8"), "refused", kind="connect")
    total = fleet_total([ok, ok, failed])
    assert total["flows"] == 22
    assert total["drops"] == "36/2/8"  # insert_failed/drop/early_drop summed over the boxes
    assert total["error"] == "1 failed"
    assert summary_record(failed)["error"] == "connect: refused"
    record = summary_record(ok)
    assert (record["snat"], record["dnat"]) == (
        ok.answer.summary.by_nat["snat"] + ok.answer.summary.by_nat["snat+dnat"],
        ok.answer.summary.by_nat["dnat"] + ok.answer.summary.by_nat["snat+dnat"],
    )


def test_summary_json_is_the_checked_answer():
    ok = result("a", "summary")
    data = summary_json([ok])
    assert data["boxes"][0]["summary"] == answer("summary")["summary"]
    assert data["boxes"][0]["target"]["name"] == "a" and data["total"]["flows"] == 11
